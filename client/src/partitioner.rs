//! Which partition a record goes to: Kafka's default partitioner, bit for bit.
//!
//! A record with a key goes to `toPositive(murmur2(key)) % partitions`, where `murmur2` is
//! Kafka's 32-bit MurmurHash2 (seed `0x9747b28c`) and `toPositive(x) = x & 0x7fffffff`, as in
//! Kafka's `BuiltInPartitioner.partitionForKey`. So a key lands on the partition a Kafka producer
//! would pick for the same key bytes and partition count, and one key's records stay in one
//! partition, in order. Records without a key use a sticky partition per topic, chosen at random
//! and changed when its batch is sent (see the producer's accumulator); `Rng` is the small
//! generator behind that choice.

/// Kafka's murmur2 seed.
pub const MURMUR2_SEED: u32 = 0x9747_b28c;

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 of `data` with [`MURMUR2_SEED`].
///
/// ```
/// assert_eq!(strom_client::partitioner::murmur2(b"21"), -973_932_308);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java computes `seed ^ length` on ints: a length above 2^31 cannot occur there; wrapping
    // keeps the same low 32 bits here.
    let mut h: u32 = MURMUR2_SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
#[inline]
pub fn to_positive(x: i32) -> i32 {
    x & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for `key` among `partitions` (which must be
/// at least 1; 0 is treated as 1).
///
/// ```
/// use strom_client::partitioner::partition_for_key;
/// assert_eq!(partition_for_key(b"a", 10), 4);
/// ```
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    to_positive(murmur2(key)) % partitions.max(1)
}

/// A small xorshift64* generator for the sticky partition choice: not for anything that needs
/// unpredictability, only for spreading keyless batches.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the address of a local, so two producers differ.
    pub(crate) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as u64;
        Self::with_seed(nanos ^ addr.rotate_left(32))
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` >= 1).
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n.max(1))) >> 32) as u32
    }

    /// A partition in `0..partitions` other than `previous` when there is a choice.
    pub(crate) fn next_partition(&mut self, partitions: i32, previous: Option<i32>) -> i32 {
        let n = partitions.max(1) as u32;
        match previous {
            Some(prev) if n > 1 && (0..partitions).contains(&prev) => {
                // Pick among the n - 1 others, uniformly.
                let r = self.below(n - 1) as i32;
                if r >= prev { r + 1 } else { r }
            }
            _ => self.below(n) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `UtilsTest.testMurmur2` vectors.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{:?}", std::str::from_utf8(data));
        }
    }

    /// More vectors from another Kafka-compatible client's tests (akka's `Murmur2Spec`, whose
    /// expectations come from Kafka's Java implementation); with the vectors above they cover
    /// every tail length (0 to 3 bytes after the 4-byte blocks).
    #[test]
    fn murmur2_matches_other_clients() {
        let cases: [(&str, i32); 5] = [
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ];
        for (s, expected) in cases {
            assert_eq!(murmur2(s.as_bytes()), expected, "{s}");
        }
    }

    #[test]
    fn key_to_partition_matches_kafka() {
        // BuiltInPartitioner.partitionForKey(key.getBytes(), 10), as asserted by a Spock spec
        // that calls Kafka's own classes.
        for (key, partition) in [("a", 4), ("b", 6), ("c", 4), ("d", 3), ("e", 4)] {
            assert_eq!(partition_for_key(key.as_bytes(), 10), partition, "{key}");
        }
        // From the murmur2 vectors: toPositive(-973932308) = 1173551340.
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 12), 1_173_551_340 % 12);
        assert_eq!(partition_for_key(b"foobar", 12), 6);
        assert_eq!(partition_for_key(b"abc", 12), 3);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn sticky_choice_changes_partition() {
        let mut rng = Rng::with_seed(42);
        for _ in 0..1000 {
            let p = rng.next_partition(5, Some(2));
            assert!((0..5).contains(&p) && p != 2);
        }
        assert_eq!(rng.next_partition(1, Some(0)), 0);
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[rng.next_partition(4, None) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
