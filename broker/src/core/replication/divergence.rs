//! Where a follower's log and its leader's part ways, by leader epochs (KIP-101, KIP-279, and
//! their fold into Fetch from Kafka 2.7): the leader tells a follower whose last fetched batch
//! does not match its own history where that epoch ends for it; the follower truncates there,
//! possibly in several rounds, never to its high watermark (truncating to the HW lost
//! acknowledged data before KIP-101).
//!
//! Both sides use the same lookup, a log's `end_offset_for_epoch`: for an epoch, the largest
//! epoch it holds at or below it and where that one ends (the next epoch's start, or the log
//! end); `(-1, -1)` when it holds no epoch that old.

/// An epoch and the offset where it ends, as `end_offset_for_epoch` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The epoch (-1: none).
    pub epoch: i32,
    /// Where it ends (-1: unknown).
    pub end_offset: i64,
}

impl EpochEnd {
    /// The "no such epoch" answer.
    #[cfg(test)]
    pub const UNDEFINED: EpochEnd = EpochEnd {
        epoch: -1,
        end_offset: -1,
    };

    fn is_undefined(&self) -> bool {
        self.epoch < 0 || self.end_offset < 0
    }
}

/// The leader's check of a follower fetch at `fetch_offset` whose last fetched batch had epoch
/// `last_fetched_epoch` (-1: the follower holds nothing, or does not say). `leader_lookup` is the
/// leader's `end_offset_for_epoch(last_fetched_epoch)`. Returns the diverging epoch to send back
/// instead of records, or `None` when the follower's log is a prefix of the leader's.
pub fn check_follower(
    fetch_offset: i64,
    last_fetched_epoch: i32,
    leader_lookup: EpochEnd,
) -> Option<EpochEnd> {
    if last_fetched_epoch < 0 {
        return None;
    }
    if leader_lookup.epoch < last_fetched_epoch || leader_lookup.end_offset < fetch_offset {
        return Some(leader_lookup);
    }
    None
}

/// What a follower does with a diverging epoch from its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Truncate the log to this offset (remove everything at and after it).
    pub offset: i64,
    /// Whether the logs agree up to `offset`. If not, the follower truncates there and fetches
    /// again: its next last fetched epoch is older, and the leader checks that one.
    pub complete: bool,
}

/// The follower's truncation for the leader's `diverging` answer, given its own
/// `end_offset_for_epoch(diverging.epoch)` (`local`), its log start `log_start` and its log
/// end `log_end`.
pub fn truncation_for(
    diverging: EpochEnd,
    local: EpochEnd,
    log_start: i64,
    log_end: i64,
) -> Truncation {
    if diverging.is_undefined() {
        // The leader holds no epoch this old (its log starts later, or the follower's history
        // is from another life of the partition): nothing of the follower's log can be
        // trusted. Truncating fully is the caller's job (the offset is the log start).
        return Truncation {
            offset: 0,
            complete: false,
        };
    }
    if local.is_undefined() {
        // The follower holds no epoch that old, so every batch it holds was written in an
        // epoch above `diverging.epoch` and at or below its last one, and the leader holds
        // none of those (`diverging.epoch` is its largest up to there): none of the follower's
        // log is the leader's. Cut it all (Kafka's follower answers such a lookup with the
        // start of its first epoch, to the same effect). Cutting to the leader's end of the
        // epoch instead kept a record of another epoch at an offset the leader had filled
        // differently, and the follower never caught up (found by `sim`).
        return Truncation {
            offset: diverging.end_offset.min(log_start).min(log_end),
            complete: true,
        };
    }
    let offset = diverging.end_offset.min(local.end_offset).min(log_end);
    Truncation {
        offset,
        // Same epoch on both sides: the logs agree up to the lower end. A lower local epoch:
        // its end is below the divergence, but what precedes it must be checked again.
        complete: local.epoch == diverging.epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(epoch: i32, end_offset: i64) -> EpochEnd {
        EpochEnd { epoch, end_offset }
    }

    /// A log as the list of (epoch, start) of its epochs and its end: `end_offset_for_epoch`.
    fn lookup(epochs: &[(i32, i64)], end: i64, wanted: i32) -> EpochEnd {
        let Some(i) = epochs.iter().rposition(|(ep, _)| *ep <= wanted) else {
            return EpochEnd::UNDEFINED;
        };
        let stop = epochs.get(i + 1).map_or(end, |(_, start)| *start);
        e(epochs[i].0, stop)
    }

    #[test]
    fn a_prefix_of_the_leaders_log_fetches_on() {
        // Leader: epoch 1 from 0, epoch 3 from 10, end 20. Follower at 15, last epoch 3.
        let leader = [(1, 0), (3, 10)];
        assert_eq!(check_follower(15, 3, lookup(&leader, 20, 3)), None);
        assert_eq!(check_follower(10, 1, lookup(&leader, 20, 1)), None);
        assert_eq!(check_follower(0, -1, EpochEnd::UNDEFINED), None);
    }

    #[test]
    fn kip_101s_lost_write_is_cut_where_the_epoch_ended() {
        // The follower wrote offsets 10..12 in epoch 2 as an old leader that nobody followed;
        // the new leader (epoch 3) began at 10 after epoch 1.
        let leader = [(1, 0), (3, 10)];
        let follower = [(1, 0), (2, 10)];
        let diverging = check_follower(12, 2, lookup(&leader, 30, 2)).unwrap();
        assert_eq!(
            diverging,
            e(1, 10),
            "epoch 2 is not the leader's: 1 ends at 10"
        );
        let t = truncation_for(diverging, lookup(&follower, 12, diverging.epoch), 0, 12);
        assert_eq!(
            t,
            Truncation {
                offset: 10,
                complete: true
            }
        );
    }

    #[test]
    fn a_follower_ahead_in_the_same_epoch_is_cut_to_the_leaders_end() {
        // The epoch-2 leader had 23 records; this follower fetched all of them, another one only
        // 20, and that one was elected for epoch 4 when the old leader died: the 3 records were
        // never acknowledged (the HW was at most 20) and are cut.
        let leader = [(2, 0), (4, 20)];
        let diverging = check_follower(23, 2, lookup(&leader, 40, 2)).unwrap();
        assert_eq!(diverging, e(2, 20));
        let t = truncation_for(diverging, lookup(&[(2, 0)], 23, 2), 0, 23);
        assert_eq!(
            t,
            Truncation {
                offset: 20,
                complete: true
            }
        );
    }

    #[test]
    fn a_follower_holding_only_epochs_the_leader_never_had_is_cut_whole() {
        // Epoch 0's leader wrote offset 0 and only broker 3 fetched it; broker 2, elected for
        // epoch 1 with an empty log, wrote its own offset 0 and died; broker 3 leads epoch 2
        // with epoch 0's record. Broker 2 returns and fetches at 1 with last epoch 1.
        let leader = [(0, 0), (2, 1)];
        let follower = [(1, 0)];
        let diverging = check_follower(1, 1, lookup(&leader, 1, 1)).unwrap();
        assert_eq!(diverging, e(0, 1));
        let local = lookup(&follower, 1, diverging.epoch);
        assert_eq!(local, EpochEnd::UNDEFINED);
        assert_eq!(
            truncation_for(diverging, local, 0, 1),
            Truncation {
                offset: 0,
                complete: true
            },
            "its epoch-1 record at offset 0 is not the leader's"
        );
        // A follower whose log starts later (retention) is cut to its start.
        assert_eq!(
            truncation_for(e(0, 30), EpochEnd::UNDEFINED, 20, 25).offset,
            20
        );
    }

    #[test]
    fn an_older_local_epoch_needs_another_round() {
        // Leader: epochs 1 (from 0), 5 (from 8). Follower: 1 (from 0), 3 (from 6), end 9,
        // and asks with last epoch 3: the leader's largest epoch <= 3 is 1, ending at 8.
        let leader = [(1, 0), (5, 8)];
        let follower = [(1, 0), (3, 6)];
        let diverging = check_follower(9, 3, lookup(&leader, 12, 3)).unwrap();
        assert_eq!(diverging, e(1, 8));
        let t = truncation_for(diverging, lookup(&follower, 9, 1), 0, 9);
        // The follower's epoch 1 ends at 6 (epoch 3 starts there): cut at 6, complete.
        assert_eq!(
            t,
            Truncation {
                offset: 6,
                complete: true
            }
        );
    }

    proptest! {
        /// Two logs that share a history and then diverge: following the check and truncation
        /// rounds always ends with the follower a prefix of the leader, and never cuts below
        /// the shared history.
        #[test]
        fn rounds_converge_on_the_common_prefix(
            shared in proptest::collection::vec(1i64..5, 0..5),
            leader_tail in proptest::collection::vec(1i64..5, 0..5),
            follower_tail in proptest::collection::vec(1i64..5, 0..5),
        ) {
            // Epoch runs: shared runs get epochs 1..; then the leader's runs get even epochs
            // above, the follower's odd ones (they were written by different leaders).
            let mut offset = 0;
            let mut common = Vec::new();
            for (i, len) in shared.iter().enumerate() {
                common.push((i as i32 + 1, offset));
                offset += len;
            }
            let common_end = offset;
            let base = common.len() as i32 + 1;
            let build = |tail: &[i64], parity: i32| {
                let mut epochs = common.clone();
                let mut off = common_end;
                for (i, len) in tail.iter().enumerate() {
                    epochs.push((base + 2 * i as i32 + parity, off));
                    off += len;
                }
                (epochs, off)
            };
            let (leader, leader_end) = build(&leader_tail, 1);
            let (mut follower, mut follower_end) = build(&follower_tail, 0);
            // The leader is the newer: its epochs must be above the follower's.
            let bump = follower.last().map_or(0, |(ep, _)| *ep) + 1;
            let leader: Vec<(i32, i64)> = leader
                .into_iter()
                .enumerate()
                .map(|(i, (ep, s))| if i >= common.len() { (ep + bump, s) } else { (ep, s) })
                .collect();
            for _round in 0..20 {
                let last = follower.last().map_or(-1, |(ep, _)| *ep);
                let Some(d) = check_follower(follower_end, last, lookup(&leader, leader_end, last)) else {
                    break;
                };
                let t = truncation_for(d, lookup(&follower, follower_end, d.epoch), 0, follower_end);
                let cut = if d.is_undefined() { 0 } else { t.offset };
                prop_assert!(cut >= common_end.min(follower_end) || d.is_undefined());
                follower_end = cut;
                follower.retain(|(_, s)| *s < cut);
            }
            // Now a prefix: every epoch the follower holds is the leader's, from the same start.
            let last = follower.last().map_or(-1, |(ep, _)| *ep);
            prop_assert_eq!(check_follower(follower_end, last, lookup(&leader, leader_end, last)), None);
            prop_assert!(follower_end >= common_end.min(follower_end));
            for (ep, s) in &follower {
                prop_assert!(leader.contains(&(*ep, *s)), "epoch {} from {} is not the leader's", ep, s);
            }
        }
    }
}
