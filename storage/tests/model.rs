//! Property test: random sequences of append / read / roll / reopen / crash / retention against a
//! simple in-memory model. Every read must return exactly what the model says.

mod common;

use std::sync::Arc;

use common::{Rec, batch, records_of};
use proptest::prelude::*;
use strom_storage::{Log, LogConfig, ManualClock, StorageError};

#[derive(Debug, Clone)]
enum Op {
    /// Append batches of (value length) records.
    Append(Vec<Vec<u16>>),
    Read {
        at: u16,
        max_bytes: u16,
    },
    Roll,
    CloseAndReopen,
    CrashAndReopen,
    AdvanceClock(u32),
    Retention,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(proptest::collection::vec(0u16..300, 1..6), 1..4).prop_map(Op::Append),
        4 => (any::<u16>(), 1u16..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => Just(Op::CloseAndReopen),
        1 => Just(Op::CrashAndReopen),
        1 => (0u32..20_000).prop_map(Op::AdvanceClock),
        1 => Just(Op::Retention),
        1 => Just(Op::Flush),
    ]
}

fn config(retention_bytes: bool) -> LogConfig {
    let mut c = LogConfig::default();
    c.set("segment.bytes", "4096").unwrap();
    c.set("index.interval.bytes", "256").unwrap();
    c.set("retention.ms", "30000").unwrap();
    if retention_bytes {
        c.set("retention.bytes", "12000").unwrap();
    }
    c
}

fn run(ops: Vec<Op>, retention_bytes: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let open = |clock: &ManualClock| {
        Log::open_with_clock(dir.path(), config(retention_bytes), Arc::new(clock.clone())).unwrap()
    };
    let mut log = Some(open(&clock));
    let mut model: Vec<Rec> = Vec::new();
    let mut start = 0i64;
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::Append(batches) => {
                let now = clock_now(&clock);
                let mut encoded = Vec::new();
                let mut next = l.end_offset();
                let mut expected = Vec::new();
                for sizes in &batches {
                    let values: Vec<Vec<u8>> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| vec![(next as u8).wrapping_add(i as u8); n as usize])
                        .collect();
                    let keys: Vec<Vec<u8>> = (0..sizes.len())
                        .map(|i| format!("key-{}", next + i as i64).into_bytes())
                        .collect();
                    let recs: Vec<common::Spec<'_>> = values
                        .iter()
                        .zip(&keys)
                        .map(|(v, k)| (now, Some(k.as_slice()), Some(v.as_slice())))
                        .collect();
                    encoded.push(batch(&recs));
                    for (k, v) in keys.iter().zip(&values) {
                        expected.push(Rec {
                            offset: next,
                            timestamp: now,
                            key: Some(k.clone()),
                            value: Some(v.clone()),
                        });
                        next += 1;
                    }
                }
                let expected_base = model.last().map_or(start, |r| r.offset + 1);
                let info = l.append(&encoded).unwrap();
                prop_assert_eq!(info.base_offset, expected_base);
                model.extend(expected);
                prop_assert_eq!(info.next_offset, l.end_offset());
            }
            Op::Read { at, max_bytes } => {
                let end = l.end_offset();
                let span = (end - start + 2).max(1);
                let offset = start - 1 + i64::from(at) % span;
                let r = l.reader().read(offset, usize::from(max_bytes));
                if offset < start || offset > end {
                    let is_out_of_range = matches!(r, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(
                        is_out_of_range,
                        "offset {} outside [{}, {}]: {:?}",
                        offset,
                        start,
                        end,
                        r
                    );
                } else {
                    let r = r.unwrap();
                    let got: Vec<Rec> = records_of(&r.data)
                        .into_iter()
                        .filter(|x| x.offset >= offset)
                        .collect();
                    let want: Vec<Rec> = model
                        .iter()
                        .filter(|x| x.offset >= offset && x.offset < r.next_offset)
                        .cloned()
                        .collect();
                    prop_assert_eq!(&got, &want);
                    if offset < end {
                        prop_assert!(!got.is_empty(), "a read below the end returns data");
                        prop_assert!(r.first_offset <= offset);
                    }
                }
            }
            Op::Roll => l.roll().unwrap(),
            Op::Flush => {
                l.flush().unwrap();
                prop_assert_eq!(l.durable_offset(), l.end_offset());
            }
            Op::CloseAndReopen => {
                log.take().unwrap().close().unwrap();
                log = Some(open(&clock));
            }
            Op::CrashAndReopen => {
                // Dropping without close leaves no marker: the next open recovers. A process
                // crash keeps the page cache, so nothing appended may be lost.
                drop(log.take());
                log = Some(open(&clock));
            }
            Op::AdvanceClock(ms) => clock.advance(i64::from(ms)),
            Op::Retention => {
                let out = l.enforce_retention().unwrap();
                start = out.log_start;
                model.retain(|r| r.offset >= start);
            }
        }
        let l = log.as_ref().unwrap();
        prop_assert_eq!(l.start_offset(), start);
        let end = model.last().map_or(start, |r| r.offset + 1);
        prop_assert_eq!(l.end_offset(), end.max(start));
    }
    // Everything the model holds reads back, in order.
    let l = log.take().unwrap();
    let all = common::read_all(&l.reader(), start);
    prop_assert_eq!(all, model);
    Ok(())
}

fn clock_now(c: &ManualClock) -> i64 {
    use strom_storage::Clock;
    c.now_ms()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, false)?;
    }

    #[test]
    fn log_matches_model_with_size_retention(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, true)?;
    }
}
