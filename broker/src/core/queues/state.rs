//! One queue-partition's record states: the pure state machine of a (queue group, topic,
//! partition), with no I/O, no clock and no locks.
//!
//! Offsets from `next` on were never looked at; below it, an offset lies in at most one
//! [`Span`], a run of consecutive offsets that share a state, an attempt count, a failure count
//! and a last error (run-length encoding: a fetch of 500 records is one span, so are 500 acks
//! in a row). An offset below `next` in no span is finished (acknowledged or dead-lettered), or
//! a record whose delivery time is still ahead (delayed delivery: the scan skipped it, and
//! [`QueuePartition::fire`] takes it in when its time comes, wherever it lies). `start` is the
//! lowest offset of an unfinished span (or `next`): nothing below it is held or waiting.
//!
//! Every operation is computed as a [`Delta`] (the spans it rewrites, with their whole new
//! state, and the new `start` / `next`) and then applied with [`QueuePartition::apply`], the same
//! function recovery replays the state log with. A delta holds absolute values, never
//! increments, so replaying a delta twice changes nothing, and the state rebuilt from the log is
//! the state that was live.
//!
//! Transitions (docs/queues.md draws them):
//! - fetch: `Available` (or never handed out) -> `Acquired{member, until}`, attempts + 1;
//! - ack: `Acquired` -> `Acked`;
//! - nack / lease expiry / the member's session ending: failures + 1, then `Delayed{until}` by
//!   the backoff (or `Available` at once), or `DeadLettering` once attempts reach `max_attempts`;
//! - reject: `Acquired` -> `DeadLettering`;
//! - release (or a member leaving cleanly): `Acquired` -> `Available`, attempts stay counted (or
//!   `DeadLettering` if that was the last allowed attempt);
//! - extend: `Acquired{until}` -> `Acquired{later}`;
//! - a delay ends: `Delayed` -> `Available`;
//! - a delivery time comes: (skipped) -> `Available`, attempts 0;
//! - the dead-letter record is durable: `DeadLettering` -> `DeadLettered`.
//!
//! `Acked` and `DeadLettered` are final; `start` moves past them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

pub use super::policy::{Ordering, Policy};
pub use crate::core::delays::Fired;

/// An offset in the partition.
pub type Offset = i64;
/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Why a record goes to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Its last allowed attempt failed (nack, or released at the last attempt).
    Exhausted = 1,
    /// A member rejected it.
    Rejected = 2,
    /// Its last allowed attempt's lease ran out (or its member's session ended).
    LeaseExpired = 3,
}

impl Reason {
    /// The name written in the dead-letter record's `strom.dlq.reason` header.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Exhausted => "attempts-exhausted",
            Reason::Rejected => "rejected",
            Reason::LeaseExpired => "lease-expired",
        }
    }

    /// From its number in the state log.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Reason::Exhausted),
            2 => Some(Reason::Rejected),
            3 => Some(Reason::LeaseExpired),
            _ => None,
        }
    }
}

/// A member id; cheap to clone.
pub type MemberId = Arc<str>;

/// The state of a run of records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// May be handed out now.
    Available,
    /// Held by `member` until `until`.
    Acquired { member: MemberId, until: Millis },
    /// Failed; may be handed out again from `until`.
    Delayed { until: Millis },
    /// Done.
    Acked,
    /// Its dead-letter record is being written. `since` is -1 before the first try; then the
    /// dead-letter partition's end offset just before the write, so that after a crash the
    /// records written since tell whether the write made it (docs/queues.md).
    DeadLettering { reason: Reason, since: Offset },
    /// Its dead-letter record is durable.
    DeadLettered,
}

impl State {
    fn is_final(&self) -> bool {
        matches!(self, State::Acked | State::DeadLettered)
    }
}

/// A run of consecutive offsets with one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first: Offset,
    pub last: Offset,
    pub state: State,
    /// Times handed out.
    pub attempts: u32,
    /// Failed attempts (nack, reject, lease expiry, session end).
    pub failures: u32,
    /// The last error text a member gave.
    pub error: Option<Arc<str>>,
    /// The record's key hash ([`super::policy::key_hash`]), in groups with `ordering=key`
    /// (one record per span there); `None` otherwise, and for records without a key.
    pub key: Option<u64>,
}

impl Span {
    fn len(&self) -> u64 {
        (self.last - self.first + 1) as u64
    }

    /// The same span over `first..=last` (a part of this one).
    fn part(&self, first: Offset, last: Offset) -> Span {
        let mut s = self.clone();
        s.first = first;
        s.last = last;
        s
    }

    /// Whether `next` (starting right after this span) can join it into one span.
    fn joins(&self, next: &Span) -> bool {
        self.last + 1 == next.first
            && self.attempts == next.attempts
            && self.failures == next.failures
            && self.error == next.error
            && self.key == next.key
            && self.state == next.state
    }
}

/// A change to a queue-partition: spans with their whole new state, and the new bounds and
/// totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    pub start: Offset,
    pub next: Offset,
    pub finished: Finished,
    /// How far delayed records have been taken in ([`QueuePartition::fire`]).
    pub fired: Fired,
    /// The offset the queue-partition began (or was reset) at: delayed records below it are
    /// not its.
    pub origin: Offset,
    pub spans: Vec<Span>,
}

/// Records finished since the queue-partition began, by how (for describe and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Finished {
    pub acked: u64,
    pub dead_lettered: u64,
}

/// What a member answers for a run of records it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    /// Failed: try again after `delay_ms` (`None`: the group's backoff).
    Nack {
        delay_ms: Option<u64>,
        error: Option<Arc<str>>,
    },
    /// Never retry: dead-letter now.
    Reject {
        error: Option<Arc<str>>,
    },
    /// Still working: the lease runs `ms` from now (0: the group's lease).
    Extend {
        ms: u64,
    },
    /// Give it back untried.
    Release,
}

/// Why an outcome was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("offset {0} is not held by this member at this attempt")]
    NotHeld(Offset),
    #[error("offsets {first}..={last} are not a valid range")]
    BadRange { first: Offset, last: Offset },
}

/// Failures from which a record is handed out alone.
pub const SUSPECT_FAILURES: u32 = 2;

/// With `ordering=key`: records held back behind an earlier record of their key, at most, per
/// queue-partition; new records are not looked at beyond that until some go.
pub const MAX_WAITING: u64 = 10_000;

/// What [`QueuePartition::acquire`] needs to know about the records it hands out.
pub trait RecordSource {
    /// How far from `first` towards `last` the records can be handed over in this fetch: the
    /// last offset that can, below `first` when none can.
    fn cover(&mut self, first: Offset, last: Offset) -> Offset;
    /// The key hash of the record at `offset` (asked only with `ordering=key`, for offsets
    /// `cover` allowed); `None` for a record without a key, or no record.
    fn key(&mut self, offset: Offset) -> Option<u64>;
    /// The lowest run of records in `first..=last` whose delivery time `fired` has not reached
    /// (delayed delivery), clipped to the range.
    fn delayed(&mut self, first: Offset, last: Offset, fired: Fired) -> Option<(Offset, Offset)> {
        let _ = (first, last, fired);
        None
    }
}

/// Delayed runs one fetch skips at most (each skip is an index lookup, no memory).
const MAX_SKIPS: usize = 10_000;

/// A run handed to a member by [`QueuePartition::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    pub first: Offset,
    pub last: Offset,
    /// This hand-out's number (1 for the first delivery); acks must carry it.
    pub attempt: u32,
}

/// Counts for describe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub available: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead_lettering: u64,
}

/// One queue-partition.
#[derive(Debug, Clone)]
pub struct QueuePartition {
    start: Offset,
    next: Offset,
    finished: Finished,
    fired: Fired,
    origin: Offset,
    spans: BTreeMap<Offset, Span>,
    // Indexes kept by `put` and `take`, never persisted.
    /// First offsets of `Available` spans.
    ready: BTreeSet<Offset>,
    /// (deadline, first offset) of `Acquired` and `Delayed` spans.
    deadlines: BTreeSet<(Millis, Offset)>,
    /// First offsets of `DeadLettering` spans.
    dead_lettering: BTreeSet<Offset>,
    /// Per key hash, the unfinished records that have it (`ordering=key`): the lowest is the
    /// only one that may be handed out.
    by_key: HashMap<u64, BTreeSet<Offset>>,
    /// Per key hash, records of it held (`ordering=key`): a record taken in late may be below
    /// one already handed out.
    busy_keys: HashMap<u64, u64>,
    /// Records held, per member.
    held: HashMap<MemberId, u64>,
    in_flight: u64,
    /// Records handed out again (attempt 2 or later) since the broker started; not persisted.
    redelivered: u64,
}

impl QueuePartition {
    /// A queue-partition whose first record to hand out is `start`.
    pub fn new(start: Offset) -> Self {
        Self {
            start,
            next: start,
            finished: Finished::default(),
            fired: Fired::default(),
            origin: start,
            spans: BTreeMap::new(),
            ready: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            dead_lettering: BTreeSet::new(),
            by_key: HashMap::new(),
            busy_keys: HashMap::new(),
            held: HashMap::new(),
            in_flight: 0,
            redelivered: 0,
        }
    }

    /// Records handed out again (attempt 2 or later) since the broker started.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// Counts `n` records handed out again.
    pub fn count_redelivered(&mut self, n: u64) {
        self.redelivered += n;
    }

    /// First offset not finished.
    pub fn start(&self) -> Offset {
        self.start
    }

    /// First offset never handed out.
    pub fn next(&self) -> Offset {
        self.next
    }

    /// Records acked and dead-lettered so far.
    pub fn finished(&self) -> Finished {
        self.finished
    }

    /// How far delayed records have been taken in.
    pub fn fired(&self) -> Fired {
        self.fired
    }

    /// Where the queue-partition began or was last reset.
    pub fn origin(&self) -> Offset {
        self.origin
    }

    /// Records held at once in this partition.
    #[cfg(test)]
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Records `member` holds here.
    pub fn held_by(&self, member: &str) -> u64 {
        self.held.get(member).copied().unwrap_or(0)
    }

    /// Members holding records here, with their counts.
    #[cfg(test)]
    pub fn holders(&self) -> impl Iterator<Item = (&MemberId, u64)> + '_ {
        self.held.iter().map(|(m, n)| (m, *n))
    }

    /// Every span, in offset order.
    #[cfg(test)]
    pub fn spans(&self) -> impl Iterator<Item = &Span> + '_ {
        self.spans.values()
    }

    /// The whole state as one delta (a snapshot).
    pub fn snapshot(&self) -> Delta {
        Delta {
            start: self.start,
            next: self.next,
            finished: self.finished,
            fired: self.fired,
            origin: self.origin,
            spans: self.spans.values().cloned().collect(),
        }
    }

    /// Rebuilds a queue-partition from a snapshot.
    pub fn restore(snapshot: &Delta) -> Self {
        let mut qp = Self::new(snapshot.start);
        qp.apply(snapshot);
        qp
    }

    /// Counts by state.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for s in self.spans.values() {
            match s.state {
                State::Available => c.available += s.len(),
                State::Delayed { .. } => c.delayed += s.len(),
                State::Acquired { .. } => c.in_flight += s.len(),
                State::DeadLettering { .. } => c.dead_lettering += s.len(),
                State::Acked | State::DeadLettered => {}
            }
        }
        c
    }

    /// The earliest deadline (a lease or a delay ending), if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Spans waiting for their dead-letter record, in offset order.
    pub fn dead_lettering(&self) -> impl Iterator<Item = &Span> + '_ {
        self.dead_lettering.iter().filter_map(|o| self.spans.get(o))
    }

    /// Whether some record could be handed out now (ignoring in-flight limits): a ready span,
    /// or records below `end` never handed out.
    pub fn has_available(&self, end: Offset) -> bool {
        !self.ready.is_empty() || self.next < end
    }

    // ---- applying deltas ----

    /// Applies a delta: sets its spans (splitting the spans they overlap), then the bounds.
    /// Spans below the new start are dropped.
    pub fn apply(&mut self, delta: &Delta) {
        for span in &delta.spans {
            if span.first > span.last {
                continue;
            }
            self.clear(span.first, span.last);
            self.put(span.clone());
            self.merge_around(span.first);
        }
        self.finished = delta.finished;
        self.fired = self.fired.max(delta.fired);
        self.origin = delta.origin;
        if delta.next > self.next {
            self.next = delta.next;
        }
        // Absolute: a delayed record taken in below it moves it back.
        self.start = delta.start;
        if self.next < self.start {
            self.next = self.start;
        }
        while let Some((&first, span)) = self.spans.first_key_value() {
            if span.last >= self.start {
                if first < self.start {
                    let span = self.take(first);
                    self.put(span.part(self.start, span.last));
                }
                break;
            }
            self.take(first);
        }
    }

    /// Removes whatever covers `first..=last`, putting back the parts of the spans it cuts that
    /// lie outside.
    fn clear(&mut self, first: Offset, last: Offset) {
        let overlapping: Vec<Offset> = self
            .spans
            .range(..=last)
            .rev()
            .take_while(|(_, s)| s.last >= first)
            .map(|(&f, _)| f)
            .collect();
        for f in overlapping {
            let span = self.take(f);
            if span.first < first {
                self.put(span.part(span.first, first - 1));
            }
            if span.last > last {
                self.put(span.part(last + 1, span.last));
            }
        }
    }

    /// Joins the span at `first` with its neighbours where they can be one span.
    fn merge_around(&mut self, first: Offset) {
        let mut first = first;
        if let Some((&pf, prev)) = self.spans.range(..first).next_back()
            && let Some(cur) = self.spans.get(&first)
            && prev.joins(cur)
        {
            let cur = self.take(first);
            let mut prev = self.take(pf);
            prev.last = cur.last;
            self.put(prev);
            first = pf;
        }
        let Some(cur) = self.spans.get(&first) else {
            return;
        };
        let after = cur.last + 1;
        if let Some(next) = self.spans.get(&after)
            && cur.joins(next)
        {
            let next = self.take(after);
            let mut cur = self.take(first);
            cur.last = next.last;
            self.put(cur);
        }
    }

    fn put(&mut self, span: Span) {
        let n = span.len();
        if let Some(k) = span.key
            && !span.state.is_final()
        {
            self.by_key
                .entry(k)
                .or_default()
                .extend(span.first..=span.last);
        }
        match &span.state {
            State::Available => {
                self.ready.insert(span.first);
            }
            State::Acquired { member, until } => {
                self.deadlines.insert((*until, span.first));
                *self.held.entry(member.clone()).or_insert(0) += n;
                self.in_flight += n;
                if let Some(k) = span.key {
                    *self.busy_keys.entry(k).or_insert(0) += n;
                }
            }
            State::Delayed { until } => {
                self.deadlines.insert((*until, span.first));
            }
            State::DeadLettering { .. } => {
                self.dead_lettering.insert(span.first);
            }
            State::Acked | State::DeadLettered => {}
        }
        self.spans.insert(span.first, span);
    }

    fn take(&mut self, first: Offset) -> Span {
        let Some(span) = self.spans.remove(&first) else {
            unreachable!("take of a span that is not there");
        };
        let n = span.len();
        if let Some(k) = span.key
            && let Some(offsets) = self.by_key.get_mut(&k)
        {
            for o in span.first..=span.last {
                offsets.remove(&o);
            }
            if offsets.is_empty() {
                self.by_key.remove(&k);
            }
        }
        match &span.state {
            State::Available => {
                self.ready.remove(&first);
            }
            State::Acquired { member, until } => {
                self.deadlines.remove(&(*until, first));
                if let Some(h) = self.held.get_mut(member) {
                    *h -= n;
                    if *h == 0 {
                        self.held.remove(member);
                    }
                }
                self.in_flight -= n;
                if let Some(k) = span.key
                    && let Some(b) = self.busy_keys.get_mut(&k)
                {
                    *b -= n;
                    if *b == 0 {
                        self.busy_keys.remove(&k);
                    }
                }
            }
            State::Delayed { until } => {
                self.deadlines.remove(&(*until, first));
            }
            State::DeadLettering { .. } => {
                self.dead_lettering.remove(&first);
            }
            State::Acked | State::DeadLettered => {}
        }
        span
    }

    /// The start after `changed` (in offset order, not overlapping) is applied: the lowest
    /// offset of an unfinished span, or `next`.
    fn start_after(&self, changed: &[Span], next: Offset) -> Offset {
        let mut start = changed
            .iter()
            .find(|s| !s.state.is_final())
            .map_or(next, |s| s.first);
        for (_, e) in self.spans.range(self.start..) {
            if e.first >= start {
                break;
            }
            if e.state.is_final() {
                continue;
            }
            // The lowest part of `e` the change leaves as it is.
            let mut p = e.first;
            let from = changed.partition_point(|c| c.last < p);
            for c in &changed[from..] {
                if c.first > p {
                    break;
                }
                p = c.last + 1;
            }
            if p <= e.last {
                start = start.min(p);
                break;
            }
        }
        start.min(next)
    }

    fn finish(&self, mut spans: Vec<Span>, next: Offset) -> Delta {
        spans.sort_by_key(|s| s.first);
        let mut finished = self.finished;
        for s in &spans {
            match s.state {
                State::Acked => finished.acked += self.count_becoming(s),
                State::DeadLettered => finished.dead_lettered += self.count_becoming(s),
                _ => {}
            }
        }
        let mut d = Delta {
            start: self.start,
            next,
            finished,
            fired: self.fired,
            origin: self.origin,
            spans,
        };
        d.start = self.start_after(&d.spans, next);
        // Spans below the new start are implied by it.
        let start = d.start;
        d.spans.retain(|s| s.last >= start);
        if let Some(s) = d.spans.first_mut()
            && s.first < start
        {
            *s = s.part(start, s.last);
        }
        d
    }

    // ---- operations ----

    /// Hands up to `max` records to `member` until `now + lease_ms`: first those ready again
    /// (lowest offset first; a record that failed twice or more goes alone, so a poison record
    /// is isolated), then those never handed out, below `end`. At most `max_in_flight_partition`
    /// records are held at once. `records` says how far runs can go with their records in this
    /// fetch, and (`ordering=key`) the records' keys. Returns the runs and the delta (None:
    /// nothing to hand out).
    ///
    /// With `ordering=key` a record may go only while it is its key's lowest unfinished record.
    /// New records are looked at in offset order: those that may go are handed out, those
    /// held back by an earlier record of their key become `Available` spans that wait (at
    /// most [`MAX_WAITING`] at once), so records of other keys behind them still go.
    pub fn acquire(
        &self,
        member: &MemberId,
        max: u64,
        end: Offset,
        now: Millis,
        policy: &Policy,
        records: &mut dyn RecordSource,
    ) -> (Vec<Acquired>, Option<Delta>) {
        let cap = match policy.ordering {
            Ordering::None | Ordering::Key => u64::from(policy.max_in_flight_partition),
            Ordering::Partition => 1,
        };
        let by_key = policy.ordering == Ordering::Key;
        let mut budget = max.min(cap.saturating_sub(self.in_flight));
        let until = now.saturating_add(policy.lease_ms as i64);
        let mut runs = Vec::new();
        let mut spans = Vec::new();
        if policy.ordering == Ordering::Partition {
            // Only the lowest unfinished record may go (the first span: `start` is always
            // unfinished), and only if it is free now.
            match self.spans.values().next() {
                Some(s) if s.state != State::Available => budget = 0,
                Some(_) => budget = budget.min(1),
                None => {}
            }
        }
        // A record that failed twice or more is a poison suspect: it goes alone, when it is the
        // lowest ready record, so a member crashing on it fails nothing else.
        let mut alone = false;
        for (i, first) in self.ready.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let Some(span) = self.spans.get(first) else {
                continue;
            };
            let keyed = by_key && span.key.is_some();
            if keyed && !self.lowest_of_key(span) {
                continue;
            }
            let take = if span.failures >= SUSPECT_FAILURES {
                if i > 0 {
                    continue;
                }
                alone = true;
                1
            } else if keyed {
                1
            } else {
                span.len().min(budget)
            };
            let want = span.first + take as i64 - 1;
            let last = records.cover(span.first, want).min(want);
            if last < span.first {
                break;
            }
            let take = (last - span.first + 1) as u64;
            let mut got = span.part(span.first, last);
            got.attempts += 1;
            got.state = State::Acquired {
                member: member.clone(),
                until,
            };
            runs.push(Acquired {
                first: got.first,
                last,
                attempt: got.attempts,
            });
            spans.push(got);
            budget -= take;
            if alone {
                budget = 0;
            }
        }
        let new = |first: Offset, last: Offset, state: State, attempts: u32, key| Span {
            first,
            last,
            state,
            attempts,
            failures: 0,
            error: None,
            key,
        };
        let held = State::Acquired {
            member: member.clone(),
            until,
        };
        let mut next = self.next;
        if by_key && budget > 0 && next < end {
            // With key order, look further than the budget: held-back records do not use it.
            let room = budget.saturating_add(MAX_WAITING);
            let want = next + room.min((end - next) as u64) as i64 - 1;
            let last = records.cover(next, want).min(want);
            let mut waiting = self
                .spans
                .values()
                .filter(|s| s.state == State::Available && s.attempts == 0)
                .map(Span::len)
                .sum::<u64>();
            let mut busy: HashSet<u64> = HashSet::new();
            let mut delayed = records.delayed(next, last, self.fired);
            while next <= last {
                if let Some((f, l)) = delayed
                    && f <= next
                {
                    next = l + 1;
                    delayed = records.delayed(next, last, self.fired);
                    continue;
                }
                let key = records.key(next);
                let free = key.is_none_or(|k| !self.by_key.contains_key(&k) && !busy.contains(&k));
                if free {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    runs.push(Acquired {
                        first: next,
                        last: next,
                        attempt: 1,
                    });
                    spans.push(new(next, next, held.clone(), 1, key));
                } else {
                    if waiting >= MAX_WAITING {
                        break;
                    }
                    waiting += 1;
                    spans.push(new(next, next, State::Available, 0, key));
                }
                if let Some(k) = key {
                    busy.insert(k);
                }
                next += 1;
            }
        } else {
            // Runs of records never handed out, skipping those whose delivery time is ahead
            // (they stay out of every span until [`QueuePartition::fire`]).
            let mut skips = 0;
            while budget > 0 && next < end {
                let want = next + budget.min((end - next) as u64) as i64 - 1;
                let upto = match records.delayed(next, end - 1, self.fired) {
                    Some((f, l)) if f <= next => {
                        next = l + 1;
                        skips += 1;
                        if skips >= MAX_SKIPS {
                            break;
                        }
                        continue;
                    }
                    Some((f, _)) => want.min(f - 1),
                    None => want,
                };
                let last = records.cover(next, upto).min(upto);
                if last < next {
                    break;
                }
                runs.push(Acquired {
                    first: next,
                    last,
                    attempt: 1,
                });
                spans.push(new(next, last, held.clone(), 1, None));
                budget -= (last - next + 1) as u64;
                next = last + 1;
                if last < upto {
                    // The read stopped short (the fetch's bytes).
                    break;
                }
            }
        }
        if spans.is_empty() && next == self.next {
            return (runs, None);
        }
        (runs, Some(self.finish(spans, next)))
    }

    /// Takes in delayed records whose delivery time came: `due` are the runs between `fired`
    /// and `upto` ([`crate::core::delays::DelayIndex::due`]), and `keys` gives a record's key
    /// hash (asked only with `ordering=key`). The parts of them this queue-partition skipped
    /// (below `next`, from `origin` on, in no span) become `Available` with no attempt yet;
    /// afterwards `upto` counts as taken in. None when nothing changes.
    pub fn fire(
        &self,
        due: &[(Offset, Offset)],
        upto: Fired,
        policy: &Policy,
        keys: &mut dyn FnMut(Offset) -> Option<u64>,
    ) -> Option<Delta> {
        if upto <= self.fired {
            return None;
        }
        let by_key = policy.ordering == Ordering::Key;
        let mut spans = Vec::new();
        for &(first, last) in due {
            let (first, last) = (first.max(self.origin), last.min(self.next - 1));
            let mut p = first;
            // The gaps between the spans over first..=last.
            let covering: Vec<(Offset, Offset)> = self
                .spans
                .range(..=last)
                .rev()
                .take_while(|(_, s)| s.last >= first)
                .map(|(_, s)| (s.first, s.last))
                .collect();
            for (f, l) in covering.into_iter().rev().chain([(last + 1, last + 1)]) {
                let gap_last = (f - 1).min(last);
                if p <= gap_last {
                    if by_key {
                        for o in p..=gap_last {
                            spans.push(taken_in(o, o, keys(o)));
                        }
                    } else {
                        spans.push(taken_in(p, gap_last, None));
                    }
                }
                p = p.max(l + 1);
            }
        }
        // Neighbouring runs of one kind are one span.
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        spans.sort_by_key(|s| s.first);
        for s in spans {
            match merged.last_mut() {
                Some(m) if m.joins(&s) => m.last = s.last,
                _ => merged.push(s),
            }
        }
        let mut d = self.finish(merged, self.next);
        d.fired = upto;
        Some(d)
    }

    /// Records of `span` whose state is not yet `span`'s.
    fn count_becoming(&self, span: &Span) -> u64 {
        let mut same = 0u64;
        for (_, old) in self.spans.range(..=span.last).rev() {
            if old.last < span.first {
                break;
            }
            if old.state == span.state {
                same += (old.last.min(span.last) - old.first.max(span.first) + 1) as u64;
            }
        }
        span.len() - same
    }

    /// Whether `span` starts at its key's lowest unfinished record, and no record of its key
    /// is held (one taken in late can be below one handed out).
    fn lowest_of_key(&self, span: &Span) -> bool {
        let Some(k) = span.key else { return true };
        !self.busy_keys.contains_key(&k)
            && self
                .by_key
                .get(&k)
                .and_then(|offsets| offsets.first())
                .is_none_or(|lowest| *lowest == span.first)
    }

    /// Applies a member's outcome to the run `held`, which it must hold at `held.attempt`. All
    /// or nothing.
    pub fn settle(
        &self,
        member: &str,
        held: Acquired,
        outcome: &Outcome,
        now: Millis,
        policy: &Policy,
    ) -> Result<Delta, Refused> {
        let Acquired {
            first,
            last,
            attempt,
        } = held;
        if first > last || i128::from(last) - i128::from(first) > i128::from(u32::MAX) {
            return Err(Refused::BadRange { first, last });
        }
        let mut covering = Vec::new();
        let mut at = first;
        for (_, span) in self.spans.range(..=last).rev() {
            if span.last < first {
                break;
            }
            covering.push(span);
        }
        covering.reverse();
        for span in &covering {
            let ok = span.first <= at
                && span.attempts == attempt
                && matches!(&span.state, State::Acquired { member: m, .. } if &**m == member);
            if !ok {
                return Err(Refused::NotHeld(at));
            }
            at = span.last + 1;
        }
        if at <= last || covering.is_empty() {
            return Err(Refused::NotHeld(at));
        }
        let mut spans = Vec::with_capacity(covering.len());
        for span in covering {
            let mut s = span.part(span.first.max(first), span.last.min(last));
            match outcome {
                Outcome::Ack => {
                    s = finished(s, State::Acked);
                }
                Outcome::Extend { ms } => {
                    let ms = if *ms == 0 { policy.lease_ms } else { *ms };
                    let ms = ms.min(policy.max_lease_ms);
                    if let State::Acquired { until, .. } = &mut s.state {
                        *until = now.saturating_add(ms as i64);
                    }
                }
                Outcome::Release => {
                    if s.attempts >= policy.max_attempts {
                        s.state = dead_letter(Reason::Exhausted);
                    } else {
                        s.state = State::Available;
                    }
                }
                Outcome::Reject { error } => {
                    s.failures += 1;
                    s.error = error.clone().or(s.error);
                    s.state = dead_letter(Reason::Rejected);
                }
                Outcome::Nack { delay_ms, error } => {
                    s.failures += 1;
                    s.error = error.clone().or(s.error);
                    s.state = failed(&s, *delay_ms, now, policy, Reason::Exhausted);
                }
            }
            spans.push(s);
        }
        Ok(self.finish(spans, self.next))
    }

    /// What time does at `now`: leases that ran out fail, delays that ended make their
    /// records available. None when nothing is due.
    pub fn expire(&self, now: Millis, policy: &Policy) -> Option<Delta> {
        let mut spans = Vec::new();
        for &(deadline, first) in &self.deadlines {
            if deadline > now {
                break;
            }
            let Some(span) = self.spans.get(&first) else {
                continue;
            };
            let mut s = span.clone();
            match s.state {
                State::Acquired { .. } => {
                    s.failures += 1;
                    s.state = failed(&s, None, now, policy, Reason::LeaseExpired);
                }
                State::Delayed { .. } => s.state = State::Available,
                _ => continue,
            }
            spans.push(s);
        }
        if spans.is_empty() {
            return None;
        }
        Some(self.finish(spans, self.next))
    }

    /// Takes back what `member` holds: a clean leave releases (attempts stay counted), a
    /// session that ended fails the records as a lease expiry does. None when it holds nothing.
    pub fn member_gone(
        &self,
        member: &str,
        clean: bool,
        now: Millis,
        policy: &Policy,
    ) -> Option<Delta> {
        if self.held_by(member) == 0 {
            return None;
        }
        let mut spans = Vec::new();
        for span in self.spans.values() {
            let State::Acquired { member: m, .. } = &span.state else {
                continue;
            };
            if &**m != member {
                continue;
            }
            let mut s = span.clone();
            if clean {
                s.state = if s.attempts >= policy.max_attempts {
                    dead_letter(Reason::Exhausted)
                } else {
                    State::Available
                };
            } else {
                s.failures += 1;
                s.state = failed(&s, None, now, policy, Reason::LeaseExpired);
            }
            spans.push(s);
        }
        Some(self.finish(spans, self.next))
    }

    /// Marks `first..=last` (all `DeadLettering`) as dead-lettered, once their dead-letter
    /// records are durable.
    pub fn dead_lettered(&self, first: Offset, last: Offset) -> Option<Delta> {
        let mut spans = Vec::new();
        for (_, span) in self.spans.range(..=last).rev() {
            if span.last < first {
                break;
            }
            if matches!(span.state, State::DeadLettering { .. }) {
                let s = span.part(span.first.max(first), span.last.min(last));
                spans.push(finished(s, State::DeadLettered));
            }
        }
        if spans.is_empty() {
            return None;
        }
        Some(self.finish(spans, self.next))
    }

    /// Records that the dead-letter write of `first..=last` (all `DeadLettering`) is about to
    /// start while the dead-letter partition ends at `since`.
    pub fn dead_letter_intent(&self, first: Offset, last: Offset, since: Offset) -> Option<Delta> {
        let mut spans = Vec::new();
        for (_, span) in self.spans.range(..=last).rev() {
            if span.last < first {
                break;
            }
            if let State::DeadLettering { reason, .. } = span.state {
                let mut s = span.part(span.first.max(first), span.last.min(last));
                s.state = State::DeadLettering { reason, since };
                spans.push(s);
            }
        }
        if spans.is_empty() {
            return None;
        }
        Some(self.finish(spans, self.next))
    }

    /// The queue-partition moved to `offset`: every record from it on as never handed out,
    /// everything before it done; records held are dropped (their acks will be refused).
    pub fn reset(&self, offset: Offset) -> Self {
        let mut qp = Self::new(offset);
        qp.finished = self.finished;
        qp.fired = self.fired;
        qp
    }
}

/// A delayed record taken in: available, never handed out.
fn taken_in(first: Offset, last: Offset, key: Option<u64>) -> Span {
    Span {
        first,
        last,
        state: State::Available,
        attempts: 0,
        failures: 0,
        error: None,
        key,
    }
}

fn finished(mut s: Span, state: State) -> Span {
    s.state = state;
    s.attempts = 0;
    s.failures = 0;
    s.error = None;
    s.key = None;
    s
}

fn dead_letter(reason: Reason) -> State {
    State::DeadLettering { reason, since: -1 }
}

/// The state after a failed attempt: dead-lettering if it was the last allowed one, else
/// delayed by `delay_ms` or the backoff.
fn failed(
    s: &Span,
    delay_ms: Option<u64>,
    now: Millis,
    policy: &Policy,
    last_reason: Reason,
) -> State {
    if s.attempts >= policy.max_attempts {
        return dead_letter(last_reason);
    }
    let delay = delay_ms.unwrap_or_else(|| policy.backoff.delay_ms(s.failures, now));
    if delay == 0 {
        State::Available
    } else {
        State::Delayed {
            until: now.saturating_add(delay.min(i64::MAX as u64) as i64),
        }
    }
}

#[cfg(test)]
mod tests;
