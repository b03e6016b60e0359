//! Delayed delivery's index: per partition, the runs of offsets that queue groups may not hand
//! out before a time (docs/queues.md, "Delayed delivery").
//!
//! A producer gives a delivery time per batch beside the records, never inside them, so the
//! broker never decompresses to find one. The partition's writer, the only one that knows a
//! batch's offsets before they are readable, enters `(first, last, time)` here *before* the
//! append makes the records visible, and queues the entry's record on `__queue_delays` in the
//! same step: so no queue fetch can see a delayed record before its entry, and no queue state
//! written after that fetch is written before the entry is appended. Recovery rebuilds the index
//! from those records; compaction of `__queue_delays` writes the entries still needed whole
//! (`queues::delay_log`).
//!
//! Memory: one entry per delayed batch (a producer's batches with one delivery time are one
//! entry), in two ordered maps: about 100 bytes an entry, at most [`MAX_PENDING`] per partition.
//! Queue groups keep nothing per pending delay: a queue-partition skips delayed runs while their
//! time is ahead and takes them in when it comes ([`super::queues::state`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut};

/// A topic's id, as `topics::TopicId` (the same type; named here so this module, which the
/// partition writer uses, does not import the topic registry).
pub type TopicId = [u8; 16];

/// How far ahead a delivery time may be: 90 days.
pub const MAX_DELAY_MS: i64 = 90 * 24 * 60 * 60 * 1000;

/// Pending delayed runs one partition holds at most; a produce that would pass it is refused
/// with BUSY until delays fire.
pub const MAX_PENDING: usize = 4_000_000;

/// In a cluster, how long a due run is kept past its time on every replica (a group's
/// coordinator elsewhere may not have taken it in yet; its next coordinator looks for it
/// here): 10 minutes. The bound it sets: a group whose `__queue_state` partition had no
/// leader for longer, and that had passed over a run's records while the run was pending, does
/// not hand them out when it returns if the run came due more than this before (they stay in
/// the log; resetting the group's position reads them again).
pub const CLUSTER_GRACE_MS: i64 = 10 * 60 * 1000;

/// Runs [`DelayIndex::due`] looks at, at most, per call.
pub const MAX_VISIT: usize = 100_000;

/// How far a queue-partition has taken delayed records in: every run due before `at`, and the
/// records of runs due at `at` up to offset `through`. Ordered as `(at, through)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Fired {
    pub at: i64,
    pub through: i64,
}

impl Fired {
    /// Everything due up to `at`.
    pub fn upto(at: i64) -> Self {
        Self {
            at,
            through: i64::MAX,
        }
    }

    /// The part of `d` not yet taken in, if any.
    pub fn pending(self, d: Delay) -> Option<(i64, i64)> {
        if d.at > self.at {
            Some((d.first, d.last))
        } else if d.at == self.at && self.through < d.last {
            Some((d.first.max(self.through.saturating_add(1)), d.last))
        } else {
            None
        }
    }
}

/// A delayed run of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    pub first: i64,
    pub last: i64,
    /// Milliseconds since the Unix epoch before which the records are not handed out.
    pub at: i64,
}

#[derive(Debug, Default)]
struct Entries {
    /// first -> (last, at); runs never overlap.
    by_offset: BTreeMap<i64, (i64, i64)>,
    /// (at, first).
    by_time: BTreeSet<(i64, i64)>,
}

/// The runs that overlap `first..=last`, in offset order: a run starting before `first` may
/// reach into it.
fn touching(e: &Entries, first: i64, last: i64) -> impl Iterator<Item = (&i64, &(i64, i64))> + '_ {
    let before = e
        .by_offset
        .range(..first)
        .next_back()
        .filter(|(_, (l, _))| *l >= first);
    before.into_iter().chain(e.by_offset.range(first..=last))
}

/// One partition's delayed runs.
#[derive(Debug, Default)]
pub struct DelayIndex {
    /// Held while an entry's record is queued on `__queue_delays` and while compaction queues
    /// the index whole, so an entry is either in the snapshot or written after it.
    pub order: tokio::sync::Mutex<()>,
    entries: Mutex<Entries>,
    /// Runs held by every partition's index together (the broker's; queue groups skip all
    /// delay work while it is 0).
    total: Arc<AtomicUsize>,
}

impl Drop for DelayIndex {
    fn drop(&mut self) {
        let n = self.lock().by_offset.len();
        self.total.fetch_sub(n, AtomicOrdering::Relaxed);
    }
}

impl DelayIndex {
    /// An empty index counting its runs into `total`.
    pub fn new(total: Arc<AtomicUsize>) -> Self {
        Self {
            order: tokio::sync::Mutex::new(()),
            entries: Mutex::new(Entries::default()),
            total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        match self.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        }
    }

    /// Enters a run (replacing any entry that starts at the same offset).
    pub fn insert(&self, d: Delay) {
        let mut e = self.lock();
        match e.by_offset.insert(d.first, (d.last, d.at)) {
            Some((_, at)) => {
                e.by_time.remove(&(at, d.first));
            }
            None => {
                self.total.fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
        e.by_time.insert((d.at, d.first));
    }

    /// Removes the run that starts at `first`.
    pub fn remove(&self, first: i64) {
        let mut e = self.lock();
        if let Some((_, at)) = e.by_offset.remove(&first) {
            e.by_time.remove(&(at, first));
            self.total.fetch_sub(1, AtomicOrdering::Relaxed);
        }
    }

    /// Runs held.
    pub fn len(&self) -> usize {
        self.lock().by_offset.len()
    }

    /// The lowest part of `first..=last` not yet taken in by `fired`, if any.
    pub fn delayed_in(&self, first: i64, last: i64, fired: Fired) -> Option<(i64, i64)> {
        if first > last {
            return None;
        }
        let e = self.lock();
        touching(&e, first, last)
            .filter_map(|(&f, &(l, at))| {
                fired.pending(Delay {
                    first: f,
                    last: l,
                    at,
                })
            })
            .map(|(f, l)| (f.max(first), l.min(last)))
            .find(|(f, l)| f <= l)
    }

    /// What comes due after `fired` up to `upto`, for a queue-partition that has looked at
    /// offsets below `below`: the runs to take in (in time order, at most `limit` records, at
    /// most [`MAX_VISIT`] runs looked at) and the mark that then counts as taken in.
    pub fn due(&self, fired: Fired, upto: i64, below: i64, limit: u64) -> (Vec<(i64, i64)>, Fired) {
        let e = self.lock();
        let mut out = Vec::new();
        let mut left = limit;
        for (visited, &(at, first)) in e.by_time.range((fired.at, i64::MIN)..).enumerate() {
            if at > upto {
                break;
            }
            let Some(&(last, _)) = e.by_offset.get(&first) else {
                continue;
            };
            let Some((f, l)) = fired.pending(Delay { first, last, at }) else {
                continue;
            };
            if visited >= MAX_VISIT || left == 0 {
                // Stop before this run: everything earlier is taken in.
                return (out, Fired { at, through: f - 1 });
            }
            let l = l.min(below - 1);
            if f <= l {
                let n = (l - f + 1) as u64;
                if n > left {
                    let cut = f + left as i64 - 1;
                    out.push((f, cut));
                    return (out, Fired { at, through: cut });
                }
                left -= n;
                out.push((f, l));
            }
        }
        (out, Fired::upto(upto))
    }

    /// The earliest time of a run not yet taken in by `fired`, if any.
    pub fn next_after(&self, fired: Fired) -> Option<i64> {
        let e = self.lock();
        e.by_time
            .range((fired.at, i64::MIN)..)
            .find(|(at, first)| {
                e.by_offset.get(first).is_some_and(|&(last, _)| {
                    fired
                        .pending(Delay {
                            first: *first,
                            last,
                            at: *at,
                        })
                        .is_some()
                })
            })
            .map(|(at, _)| *at)
    }

    /// Forgets runs `fired` has taken in whole: every queue-partition has.
    pub fn prune(&self, fired: Fired) -> usize {
        let mut e = self.lock();
        let gone: Vec<(i64, i64)> = e
            .by_time
            .range(..=(fired.at, i64::MAX))
            .filter(|(at, first)| {
                *at < fired.at
                    || e.by_offset
                        .get(first)
                        .is_some_and(|(last, _)| *last <= fired.through)
            })
            .copied()
            .collect();
        for (at, first) in &gone {
            e.by_time.remove(&(*at, *first));
            e.by_offset.remove(first);
        }
        self.total.fetch_sub(gone.len(), AtomicOrdering::Relaxed);
        gone.len()
    }

    /// The lowest offset from `from` on not yet taken in by `fired`, if any (for describe).
    pub fn first_pending(&self, fired: Fired, from: i64) -> Option<i64> {
        let e = self.lock();
        e.by_offset
            .iter()
            .filter_map(|(&first, &(last, at))| fired.pending(Delay { first, last, at }))
            .filter(|(_, l)| *l >= from)
            .map(|(f, _)| f.max(from))
            .next()
    }

    /// Records still pending after `fired`, from `from` on (for describe).
    pub fn pending_records(&self, fired: Fired, from: i64) -> u64 {
        let e = self.lock();
        e.by_offset
            .iter()
            .filter_map(|(&first, &(last, at))| fired.pending(Delay { first, last, at }))
            .map(|(f, l)| (l - f.max(from) + 1).max(0) as u64)
            .sum()
    }

    /// Drops what lies at or past `end` (records lost with the log's unsynced tail).
    pub fn truncate(&self, end: i64) {
        let mut e = self.lock();
        let cut: Vec<(i64, (i64, i64))> = e
            .by_offset
            .range(..)
            .rev()
            .take_while(|(_, (last, _))| *last >= end)
            .map(|(f, v)| (*f, *v))
            .collect();
        for (first, (_, at)) in cut {
            e.by_offset.remove(&first);
            e.by_time.remove(&(at, first));
            if first < end {
                e.by_offset.insert(first, (end - 1, at));
                e.by_time.insert((at, first));
            } else {
                self.total.fetch_sub(1, AtomicOrdering::Relaxed);
            }
        }
    }

    /// The runs that overlap `first..=last`, in offset order (what a follower fetching those
    /// records is sent).
    pub fn overlapping(&self, first: i64, last: i64) -> Vec<Delay> {
        if first > last {
            return Vec::new();
        }
        let e = self.lock();
        touching(&e, first, last)
            .map(|(&first, &(last, at))| Delay { first, last, at })
            .collect()
    }

    /// Every run, in offset order.
    pub fn all(&self) -> Vec<Delay> {
        self.lock()
            .by_offset
            .iter()
            .map(|(&first, &(last, at))| Delay { first, last, at })
            .collect()
    }
}

// ---- records in `__queue_delays` ----

/// Key kind of a delayed run in `__queue_delays` (after the queue coordinator's 1-3 in
/// `__queue_state`, where an older strom kept them too).
pub const KEY_DELAY: u8 = 4;
const VERSION: u8 = 1;

/// `0x04 | u16 len | topic | i32 partition | i64 first`.
pub fn key(topic: &str, partition: i32, first: i64) -> Vec<u8> {
    let t = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(15 + t.len());
    k.put_u8(KEY_DELAY);
    k.put_u16(t.len() as u16);
    k.put_slice(t);
    k.put_i32(partition);
    k.put_i64(first);
    k
}

/// `0x01 | topic id (16) | i64 last | i64 at`.
pub fn value(topic_id: &TopicId, last: i64, at: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    v.put_u8(VERSION);
    v.put_slice(topic_id);
    v.put_i64(last);
    v.put_i64(at);
    v
}

/// A delayed run's record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    /// `None`: the run was withdrawn (its append failed).
    pub entry: Option<(TopicId, i64, i64)>,
}

/// Reads a record whose key starts with [`KEY_DELAY`].
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, &'static str> {
    let mut k = key;
    if k.remaining() < 3 || k.get_u8() != KEY_DELAY {
        return Err("not a delay key");
    }
    let n = k.get_u16() as usize;
    if k.remaining() != n + 12 {
        return Err("delay key of the wrong length");
    }
    let topic = std::str::from_utf8(&k[..n])
        .map_err(|_| "delay key topic is not UTF-8")?
        .to_string();
    k.advance(n);
    let partition = k.get_i32();
    let first = k.get_i64();
    let entry = match value {
        None => None,
        Some(mut v) => {
            if v.remaining() != 33 || v.get_u8() != VERSION {
                return Err("delay value of the wrong length or version");
            }
            let mut id = [0u8; 16];
            v.copy_to_slice(&mut id);
            let last = v.get_i64();
            let at = v.get_i64();
            if last < first || first < 0 {
                return Err("delay run out of order");
            }
            Some((id, last, at))
        }
    };
    Ok(Record {
        topic,
        partition,
        first,
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(first: i64, last: i64, at: i64) -> Delay {
        Delay { first, last, at }
    }

    #[test]
    fn finds_the_lowest_delayed_part_of_a_range() {
        let i = DelayIndex::default();
        i.insert(d(10, 19, 500));
        i.insert(d(30, 30, 100));
        i.insert(d(40, 49, 900));
        let none = Fired::default();
        assert_eq!(i.delayed_in(0, 9, none), None);
        assert_eq!(i.delayed_in(0, 100, none), Some((10, 19)));
        assert_eq!(i.delayed_in(15, 100, none), Some((15, 19)));
        // Past its time, a run is no longer delayed.
        assert_eq!(i.delayed_in(0, 100, Fired::upto(500)), Some((40, 49)));
        assert_eq!(i.delayed_in(0, 35, Fired::upto(500)), None);
        assert_eq!(i.delayed_in(45, 47, none), Some((45, 47)));
        // Part of a run taken in.
        let part = Fired {
            at: 500,
            through: 14,
        };
        assert_eq!(i.delayed_in(0, 100, part), Some((15, 19)));
        assert_eq!(i.next_after(none), Some(100));
        assert_eq!(i.next_after(Fired::upto(100)), Some(500));
        assert_eq!(i.next_after(part), Some(500));
        assert_eq!(i.next_after(Fired::upto(900)), None);
        assert_eq!(i.pending_records(part, 0), 5 + 10);
        assert_eq!(i.first_pending(part, 0), Some(15));
        assert_eq!(i.first_pending(Fired::upto(500), 0), Some(40));
        assert_eq!(i.first_pending(Fired::upto(900), 0), None);
    }

    #[test]
    fn due_runs_come_in_time_order_within_a_record_limit() {
        let i = DelayIndex::default();
        i.insert(d(0, 0, 5));
        i.insert(d(1, 1, 5));
        i.insert(d(2, 2, 3));
        i.insert(d(3, 3, 7));
        i.insert(d(50, 55, 4));
        let (v, f) = i.due(Fired::default(), 6, 10, 100);
        assert_eq!(v, vec![(2, 2), (0, 0), (1, 1)]);
        assert_eq!(f, Fired::upto(6));
        // Runs at or past `below` are not this queue-partition's yet, but count as taken in.
        let (v, f) = i.due(Fired::default(), 6, 1, 100);
        assert_eq!(v, vec![(0, 0)]);
        assert_eq!(f, Fired::upto(6));
        // A limit cuts inside a time, and inside a run.
        let (v, f) = i.due(Fired::default(), 10, 100, 2);
        assert_eq!(v, vec![(2, 2), (50, 50)]);
        assert_eq!(f, Fired { at: 4, through: 50 });
        let (v, f) = i.due(f, 10, 100, 7);
        assert_eq!(v, vec![(51, 55), (0, 0), (1, 1)]);
        assert_eq!(f, Fired { at: 7, through: 2 });
        assert_eq!(i.prune(f), 4);
        assert_eq!(i.all(), vec![d(3, 3, 7)]);
        assert_eq!(i.total.load(AtomicOrdering::Relaxed), 1);
    }

    #[test]
    fn the_shared_total_follows_every_index() {
        let total = Arc::new(AtomicUsize::new(0));
        let a = DelayIndex::new(total.clone());
        let b = DelayIndex::new(total.clone());
        a.insert(d(0, 9, 5));
        a.insert(d(0, 9, 6)); // the same run again
        a.insert(d(10, 19, 6));
        b.insert(d(0, 0, 1));
        assert_eq!(total.load(AtomicOrdering::Relaxed), 3);
        a.truncate(5);
        a.remove(0);
        assert_eq!(total.load(AtomicOrdering::Relaxed), 1);
        drop(b);
        assert_eq!(total.load(AtomicOrdering::Relaxed), 0);
    }

    #[test]
    fn truncate_cuts_runs_at_the_log_end() {
        let i = DelayIndex::default();
        i.insert(d(0, 9, 5));
        i.insert(d(10, 19, 6));
        i.insert(d(20, 29, 7));
        i.truncate(15);
        assert_eq!(i.all(), vec![d(0, 9, 5), d(10, 14, 6)]);
        assert_eq!(i.next_after(Fired::upto(6)), None);
    }

    #[test]
    fn records_round_trip_and_bad_bytes_are_errors() {
        let id = [7u8; 16];
        let k = key("orders", 3, 42);
        let v = value(&id, 50, 1_000);
        let r = decode(&k, Some(&v)).unwrap();
        assert_eq!(
            r,
            Record {
                topic: "orders".into(),
                partition: 3,
                first: 42,
                entry: Some((id, 50, 1_000)),
            }
        );
        assert_eq!(decode(&k, None).unwrap().entry, None);
        for n in 0..k.len() {
            assert!(decode(&k[..n], Some(&v)).is_err());
        }
        for n in 0..v.len() {
            assert!(decode(&k, Some(&v[..n])).is_err());
        }
        assert!(decode(&k, Some(&value(&id, 41, 0))).is_err());
    }
}
