//! A queue group's delivery policy: leases, attempts, backoff, in-flight limits and ordering,
//! as the state machine ([`super::state`]) applies them.

/// A queue group's settings that the state machine applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lease of a fetched record.
    pub lease_ms: u64,
    /// Longest lease an extend may ask for.
    pub max_lease_ms: u64,
    /// Hand-outs of a record before it is dead-lettered.
    pub max_attempts: u32,
    /// The delay before failed attempt `n` (1-based) may be retried.
    pub backoff: Backoff,
    /// Records held by one member at once, over all partitions (checked by the caller).
    pub max_in_flight_member: u32,
    /// Records held at once in one partition.
    pub max_in_flight_partition: u32,
    pub ordering: Ordering,
}

/// When a failed record is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backoff {
    /// `min(max, base * 2^(n-1))`, minus up to `jitter_pct` percent.
    Exponential {
        base_ms: u64,
        max_ms: u64,
        jitter_pct: u8,
    },
    /// The n-th delay of the list (the last one once the list is used up).
    List(Vec<u64>),
}

impl Backoff {
    /// The delay after failure `failures` (1-based) at time `now`. The jitter is a hash of
    /// both (the deadline it gives is stored, so nothing needs to compute it again).
    pub fn delay_ms(&self, failures: u32, now: i64) -> u64 {
        match self {
            Backoff::Exponential {
                base_ms,
                max_ms,
                jitter_pct,
            } => {
                let shift = failures.saturating_sub(1).min(63);
                let full = base_ms.saturating_mul(1u64 << shift).min(*max_ms);
                if *jitter_pct == 0 || full == 0 {
                    return full;
                }
                let h = mix(now as u64 ^ (u64::from(failures) << 56));
                let span = full * u64::from((*jitter_pct).min(100)) / 100;
                full - h % (span + 1)
            }
            Backoff::List(delays) => {
                let i = (failures.max(1) - 1) as usize;
                delays
                    .get(i)
                    .or_else(|| delays.last())
                    .copied()
                    .unwrap_or(0)
            }
        }
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Order the group keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Any record to any member (maximum parallelism).
    #[default]
    None,
    /// One record of a partition in flight at a time, in offset order.
    Partition,
    /// One record of a key in flight at a time, in offset order; a failing record holds back
    /// only its key. Records without a key are unordered.
    Key,
}

/// The hash a key is ordered by (FNV-1a, 64 bits): stored in the state log, so it must never
/// change between builds. Equal keys always hash equal; two keys that collide are merely
/// ordered together.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
