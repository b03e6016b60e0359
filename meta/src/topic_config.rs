//! The topic settings the controller itself reads, under Kafka's names: `min.insync.replicas`
//! and `unclean.leader.election.enable`. This module owns their names, their defaults, how a
//! value is read and which values the active controller accepts at CreateTopic and
//! AlterTopicConfigs. Every other setting belongs to the brokers' storage and passes through the
//! controller untouched.
//!
//! Validation happens when a request is made, not when a command is applied: applying must stay
//! the same function on every member and every version, so a log written before a rule existed
//! replays as it did. Readers therefore never fail: a value that does not parse (only an older
//! log can hold one) reads as the default.

use crate::types::Rejection;

/// The fewest in-sync replicas with which a partition's leader acknowledges `acks=all` writes
/// and moves its high watermark (Kafka's `min.insync.replicas`).
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Whether a replica outside the ISR may be elected when no in-sync replica is alive, at the
/// cost of the writes it lacks (Kafka's `unclean.leader.election.enable`).
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// `min.insync.replicas` when a topic does not set it: Kafka's default.
pub const DEFAULT_MIN_INSYNC_REPLICAS: usize = 1;

/// `unclean.leader.election.enable` when a topic does not set it: Kafka's default, never lose
/// acknowledged writes to stay available.
pub const DEFAULT_UNCLEAN_LEADER_ELECTION: bool = false;

/// Checks one setting the controller reads; any other key is accepted as it is (the broker
/// checks its own settings before it asks the controller).
///
/// `min.insync.replicas` is an integer from 1 up to Kafka's `int` range. As in Kafka it may be
/// larger than the topic's replication factor: such a topic accepts no `acks=all` write
/// (`NOT_ENOUGH_REPLICAS`) until it has that many in-sync replicas, which an operator may want
/// while replicas are being added, so it is not refused here.
pub fn check(key: &str, value: &str) -> Result<(), Rejection> {
    let reason = match key {
        MIN_INSYNC_REPLICAS => parse_min_insync_replicas(value).err(),
        UNCLEAN_LEADER_ELECTION => parse_bool(value).err(),
        _ => None,
    };
    match reason {
        Some(reason) => Err(Rejection::InvalidConfig {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Checks every setting of a creation or change ([`check`]); the first bad one is the answer.
pub fn check_all<'a>(
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Rejection> {
    settings
        .into_iter()
        .try_for_each(|(key, value)| check(key, value))
}

/// Reads `min.insync.replicas`.
pub(crate) fn parse_min_insync_replicas(value: &str) -> Result<usize, &'static str> {
    let n: i64 = value.trim().parse().map_err(|_| "not an integer")?;
    if n < 1 {
        return Err("must be at least 1");
    }
    if n > i64::from(i32::MAX) {
        return Err("must be at most 2147483647");
    }
    usize::try_from(n).map_err(|_| "too large for this machine")
}

/// Reads a boolean setting: `true` or `false` in any case, as Kafka reads them.
pub(crate) fn parse_bool(value: &str) -> Result<bool, &'static str> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("expected true or false")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_insync_replicas_is_a_positive_int_and_may_exceed_any_factor() {
        for good in ["1", "2", " 3 ", "7", "2147483647"] {
            assert_eq!(check(MIN_INSYNC_REPLICAS, good), Ok(()), "{good}");
        }
        for bad in ["0", "-1", "", "two", "1.5", "2147483648"] {
            assert!(
                matches!(
                    check(MIN_INSYNC_REPLICAS, bad),
                    Err(Rejection::InvalidConfig { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn unclean_election_is_a_boolean_and_other_keys_pass_through() {
        for good in ["true", "false", "TRUE", " False "] {
            assert_eq!(check(UNCLEAN_LEADER_ELECTION, good), Ok(()), "{good}");
        }
        for bad in ["yes", "1", ""] {
            assert!(check(UNCLEAN_LEADER_ELECTION, bad).is_err(), "{bad:?}");
        }
        assert_eq!(check("retention.ms", "anything"), Ok(()));
        let err = check_all([("retention.ms", "1"), (MIN_INSYNC_REPLICAS, "0")]).unwrap_err();
        assert_eq!(
            err,
            Rejection::InvalidConfig {
                key: MIN_INSYNC_REPLICAS.into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            }
        );
    }
}
