//! Kafka's zigzag variable-length integers, as used inside RecordBatch v2 records.
//!
//! A value is zigzag-mapped (`(v << 1) ^ (v >> 63)`, so small negative numbers stay short) and then
//! written seven bits at a time, least significant group first, with the high bit of each byte set
//! when more bytes follow. A `varint` (i32) takes at most 5 bytes, a `varlong` (i64) at most 10.
//! Decoding is strict: an encoding longer than the maximum, or one that runs off the end of the
//! input, is an error and never a panic.

use bytes::BufMut;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    /// The input ended in the middle of the number.
    #[error("varint runs past the end of the input")]
    Truncated,
    /// More continuation bytes than the type can hold.
    #[error("varint is longer than {max} bytes")]
    TooLong {
        /// The longest valid encoding for the type.
        max: usize,
    },
    /// A varlong-sized value where a 32-bit varint was expected.
    #[error("varint value {0} does not fit in 32 bits")]
    Overflow(i64),
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Number of bytes `v` takes as a zigzag varlong (the same for a varint holding an i32).
#[inline]
pub fn encoded_len(v: i64) -> usize {
    let u = zigzag(v);
    // 64 - leading zeros gives the number of significant bits; at least one byte.
    let bits = 64 - (u | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` as a zigzag varlong. An i32 written through this is a valid Kafka varint.
#[inline]
pub fn put_varlong(buf: &mut impl BufMut, v: i64) {
    let mut u = zigzag(v);
    while u >= 0x80 {
        buf.put_u8((u as u8) | 0x80);
        u >>= 7;
    }
    buf.put_u8(u as u8);
}

/// Appends `v` as a zigzag varint.
#[inline]
pub fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_varlong(buf, i64::from(v));
}

/// Decodes a zigzag varlong from the start of `input`, returning the value and the bytes consumed.
#[inline]
pub fn get_varlong(input: &[u8]) -> Result<(i64, usize), VarintError> {
    decode(input, 10).map(|(u, n)| (unzigzag(u), n))
}

/// Decodes a zigzag varint (at most 5 bytes, value within i32) from the start of `input`.
#[inline]
pub fn get_varint(input: &[u8]) -> Result<(i32, usize), VarintError> {
    let (u, n) = decode(input, 5)?;
    let v = unzigzag(u);
    i32::try_from(v)
        .map(|v| (v, n))
        .map_err(|_| VarintError::Overflow(v))
}

#[inline]
fn decode(input: &[u8], max: usize) -> Result<(u64, usize), VarintError> {
    let mut result: u64 = 0;
    for (i, &byte) in input.iter().enumerate() {
        if i >= max {
            return Err(VarintError::TooLong { max });
        }
        result |= u64::from(byte & 0x7f) << (7 * i as u32);
        if byte & 0x80 == 0 {
            return Ok((result, i + 1));
        }
    }
    if input.len() >= max {
        Err(VarintError::TooLong { max })
    } else {
        Err(VarintError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // Values and encodings from Kafka's ByteUtilsTest (zigzag varint).
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (-65, &[0x81, 0x01]),
            (8191, &[0xfe, 0x7f]),
            (-8192, &[0xff, 0x7f]),
            (8192, &[0x80, 0x80, 0x01]),
            (i64::from(i32::MAX), &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i64::from(i32::MIN), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(v, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out, bytes, "encoding {v}");
            assert_eq!(encoded_len(v), bytes.len());
            assert_eq!(get_varlong(bytes), Ok((v, bytes.len())));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(get_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(VarintError::TooLong { max: 5 })
        );
        assert!(matches!(
            get_varint(&[0xfe, 0xff, 0xff, 0xff, 0x1f]),
            Err(VarintError::Overflow(_))
        ));
        assert_eq!(
            get_varlong(&[0xff; 11]),
            Err(VarintError::TooLong { max: 10 })
        );
    }

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), encoded_len(v));
            prop_assert_eq!(get_varlong(&out), Ok((v, out.len())));
        }

        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(get_varint(&out), Ok((v, out.len())));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = get_varlong(&bytes);
            let _ = get_varint(&bytes);
        }
    }
}
