//! Reopening the metadata quorum's stores: everything written comes back, a torn last record is
//! dropped, damage in the middle is an error, and snapshots survive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    Vote,
};
use strom_meta::durable::{self, MAX_RECORD_LEN};
use strom_meta::image::MetadataImage;
use strom_meta::log_store::{LOG_FILE, LogStore, LogStoreOptions};
use strom_meta::state_machine::{SNAPSHOT_FILE, StateMachineStore};
use strom_meta::types::{Endpoints, MetaCommand, MetaResponse, TopicId, TypeConfig};

type LogEntry = Entry<TypeConfig>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> LogEntry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn membership(voters: &[u64]) -> Membership<u64, strom_meta::types::ControllerNode> {
    Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], None)
}

/// Entries `indexes` of `term`: a mix of commands, memberships and blanks.
fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
    indexes
        .map(|i| {
            let payload = match i % 4 {
                0 => EntryPayload::Membership(membership(&[1, 2, 3])),
                1 => EntryPayload::Normal(MetaCommand::AllocateProducerIds {
                    broker: 1,
                    count: u32::try_from(i).unwrap(),
                }),
                2 => EntryPayload::Normal(MetaCommand::AlterTopicConfigs {
                    name: format!("topic-{i}"),
                    configs: BTreeMap::from([("retention.ms".to_owned(), Some(i.to_string()))]),
                }),
                _ => EntryPayload::Blank,
            };
            entry(term, i, payload)
        })
        .collect()
}

async fn all_entries(store: &mut LogStore) -> Vec<LogEntry> {
    store.try_get_log_entries(..).await.unwrap()
}

fn log_path(dir: &Path) -> std::path::PathBuf {
    dir.join(LOG_FILE)
}

/// The positions of the records of the log file.
fn record_positions(dir: &Path) -> Vec<u64> {
    let buf = fs::read(log_path(dir)).unwrap();
    let scan = durable::scan(&buf, MAX_RECORD_LEN, &log_path(dir)).unwrap();
    scan.records.iter().map(|r| r.position).collect()
}

#[tokio::test]
async fn reopen_restores_entries_vote_committed_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=30);
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(written[..10].to_vec()).await.unwrap();
        log.append_durable(written[10..].to_vec()).await.unwrap();
        log.write_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.write_committed(Some(log_id(1, 25))).unwrap();
        log.purge_upto(log_id(1, 7)).await.unwrap();
        log.truncate_since(28).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, written[7..27].to_vec());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 25)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 7)));
    assert_eq!(state.last_log_id, Some(log_id(1, 27)));

    // Appending after a reopen continues the same log.
    log.append_durable(entries(2, 28..=29)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 29))
    );
    assert_eq!(all_entries(&mut log).await.len(), 22);
}

#[tokio::test]
async fn the_size_counts_the_entries_held() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let written = entries(1, 1..=30);
    let mut log = LogStore::open(dir.path()).unwrap();
    let size = log.size();
    assert_eq!(size.load(Ordering::Relaxed), 0);
    log.append_durable(written.clone()).await.unwrap();
    let file_len = fs::metadata(log_path(dir.path())).unwrap().len();
    assert_eq!(
        size.load(Ordering::Relaxed),
        file_len,
        "only entries written"
    );
    log.purge_upto(log_id(1, 7)).await.unwrap();
    log.truncate_since(28).await.unwrap();
    let held = size.load(Ordering::Relaxed);
    assert!(held < file_len, "{held} of {file_len}");
    drop(log);

    // The same after a reopen, and the same as a log that only ever held those entries.
    let log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.size().load(Ordering::Relaxed), held);
    let fresh = tempfile::tempdir().unwrap();
    let mut other = LogStore::open(fresh.path()).unwrap();
    other.append_durable(written[7..27].to_vec()).await.unwrap();
    assert_eq!(other.size().load(Ordering::Relaxed), held);
}

#[tokio::test]
async fn everything_purged_keeps_the_purged_id() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(entries(1, 1..=5)).await.unwrap();
        // A snapshot installed past the end of the log purges beyond it.
        log.purge_upto(log_id(3, 40)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert!(all_entries(&mut log).await.is_empty());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 40)));
    assert_eq!(state.last_log_id, Some(log_id(3, 40)));
    // Entries the purge covers are skipped; the next one is stored.
    log.append_durable(entries(3, 39..=41)).await.unwrap();
    assert_eq!(all_entries(&mut log).await, entries(3, 41..=41));
}

#[tokio::test]
async fn conflicting_append_replaces_the_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(entries(1, 1..=10)).await.unwrap();
        // Same log ids again: kept as they are.
        log.append_durable(entries(1, 3..=5)).await.unwrap();
        assert_eq!(all_entries(&mut log).await, entries(1, 1..=10));
        // A new term from index 6 on: 6..=10 of term 1 are gone.
        log.append_durable(entries(2, 6..=7)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let mut expected = entries(1, 1..=5);
    expected.extend(entries(2, 6..=7));
    assert_eq!(all_entries(&mut log).await, expected);
}

#[tokio::test]
async fn non_consecutive_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let mut batch = entries(1, 1..=3);
    batch.extend(entries(1, 5..=5));
    assert!(log.append_durable(batch).await.is_err());
    assert!(all_entries(&mut log).await.is_empty());
}

#[tokio::test]
async fn completions_are_reported_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    let reported = Arc::new(Mutex::new(Vec::new()));
    for i in 1..=300 {
        let reported = Arc::clone(&reported);
        log.append_then(entries(1, i..=i), move |result| {
            result.unwrap();
            reported.lock().unwrap().push(i);
        })
        .unwrap();
        // Readable at once, durable or not.
        assert_eq!(log.try_get_log_entries(i..=i).await.unwrap().len(), 1);
    }
    log.sync().await.unwrap();
    assert_eq!(*reported.lock().unwrap(), (1..=300).collect::<Vec<_>>());
}

#[tokio::test]
async fn torn_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(entries(1, 1..=10)).await.unwrap();
    }
    let positions = record_positions(dir.path());
    let last = *positions.last().unwrap();
    let full = fs::read(log_path(dir.path())).unwrap();
    for cut in [
        last + 1,
        last + 5,
        last + 8,
        last + 9,
        full.len() as u64 - 1,
    ] {
        fs::write(log_path(dir.path()), &full[..usize::try_from(cut).unwrap()]).unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            all_entries(&mut log).await,
            entries(1, 1..=9),
            "cut at {cut}"
        );
        assert_eq!(
            fs::metadata(log_path(dir.path())).unwrap().len(),
            last,
            "the torn tail is cut off"
        );
    }
    // A zero-filled tail (a crash after the file grew, before its data was written) is torn too.
    let mut zeroed = full[..usize::try_from(last).unwrap()].to_vec();
    zeroed.extend_from_slice(&[0; 4096]);
    fs::write(log_path(dir.path()), &zeroed).unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, entries(1, 1..=9));
    // The log goes on after the cut.
    log.append_durable(entries(1, 10..=11)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, entries(1, 1..=11));
}

#[tokio::test]
async fn damage_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(entries(1, 1..=10)).await.unwrap();
    }
    let positions = record_positions(dir.path());
    let good = fs::read(log_path(dir.path())).unwrap();
    let middle = usize::try_from(positions[5]).unwrap();
    // A payload byte, a checksum byte, and each byte of the length field.
    for offset in [
        middle + 20,
        middle + 5,
        middle,
        middle + 1,
        middle + 2,
        middle + 3,
    ] {
        let mut bad = good.clone();
        bad[offset] ^= 0x10;
        fs::write(log_path(dir.path()), &bad).unwrap();
        let err = LogStore::open(dir.path()).unwrap_err();
        assert!(err.is_corruption(), "flip at {offset}: {err}");
        // Nothing was cut off: the damage is left for an operator to look at.
        assert_eq!(fs::read(log_path(dir.path())).unwrap(), bad);
    }
}

#[tokio::test]
async fn huge_length_field_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(entries(1, 1..=4)).await.unwrap();
    }
    let good = fs::read(log_path(dir.path())).unwrap();
    let positions = record_positions(dir.path());

    // At the end: a header claiming ~4 GiB followed by a few bytes is a torn record.
    let mut tail = good.clone();
    tail.extend_from_slice(&0xFFFF_FFF0_u32.to_le_bytes());
    tail.extend_from_slice(&[0xAB; 12]);
    fs::write(log_path(dir.path()), &tail).unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, entries(1, 1..=4));
    drop(log);
    assert_eq!(fs::read(log_path(dir.path())).unwrap(), good);

    // In the middle: corruption, reported without reading past the limit.
    let mut middle = good.clone();
    let at = usize::try_from(positions[1]).unwrap();
    middle[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(log_path(dir.path()), &middle).unwrap();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[tokio::test]
async fn compaction_rewrites_the_file_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogStoreOptions {
        compact_min_dead_records: 8,
        ..LogStoreOptions::default()
    };
    {
        let mut log = LogStore::open_with(dir.path(), options.clone()).unwrap();
        log.append_durable(entries(1, 1..=40)).await.unwrap();
        log.write_committed(Some(log_id(1, 38))).unwrap();
        let before = fs::metadata(log_path(dir.path())).unwrap().len();
        log.purge_upto(log_id(1, 35)).await.unwrap();
        let after = fs::metadata(log_path(dir.path())).unwrap().len();
        assert!(
            after < before / 2,
            "compacted from {before} to {after} bytes"
        );
        assert_eq!(record_positions(dir.path()).len(), 1 + 5 + 1);
        log.append_durable(entries(1, 41..=42)).await.unwrap();
    }
    let mut log = LogStore::open_with(dir.path(), options).unwrap();
    assert_eq!(all_entries(&mut log).await, entries(1, 36..=42));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 38)));
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 35))
    );
}

#[tokio::test]
async fn few_large_superseded_records_are_compacted_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogStoreOptions {
        compact_min_dead_records: u64::MAX,
        compact_min_dead_bytes: 1024,
        ..LogStoreOptions::default()
    };
    let mut log = LogStore::open_with(dir.path(), options.clone()).unwrap();
    log.append_durable(entries(1, 1..=40)).await.unwrap();
    let before = fs::metadata(log_path(dir.path())).unwrap().len();
    assert!(before > 2048, "{before}");
    log.purge_upto(log_id(1, 35)).await.unwrap();
    assert_eq!(
        record_positions(dir.path()).len(),
        1 + 5,
        "the purge marker and the 5 entries left"
    );
    drop(log);
    let mut log = LogStore::open_with(dir.path(), options).unwrap();
    assert_eq!(all_entries(&mut log).await, entries(1, 36..=40));
}

/// Commands that register brokers and create a topic, applied straight to a state machine.
fn image_entries() -> Vec<LogEntry> {
    let register = |broker, index| {
        entry(
            1,
            index,
            EntryPayload::Normal(MetaCommand::RegisterBroker {
                broker,
                incarnation: u128::MAX - u128::from(broker),
                endpoints: Endpoints {
                    native: Some(format!("host{broker}:9000")),
                    ..Endpoints::default()
                },
                rack: None,
            }),
        )
    };
    vec![
        entry(1, 1, EntryPayload::Membership(membership(&[1, 2]))),
        register(1, 2),
        register(2, 3),
        entry(
            1,
            4,
            EntryPayload::Normal(MetaCommand::CreateTopic {
                name: "orders".to_owned(),
                id: TopicId(u128::MAX - 7),
                configs: BTreeMap::new(),
                assignments: vec![vec![1, 2], vec![2, 1]],
            }),
        ),
        entry(1, 5, EntryPayload::Blank),
    ]
}

#[tokio::test]
async fn built_snapshot_restores_the_state_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let image = {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let mut watch = sm.applied_watch();
        let responses = sm.apply(image_entries()).await.unwrap();
        assert_eq!(responses[1], MetaResponse::Registered { broker_epoch: 2 });
        assert!(watch.has_changed().unwrap());
        let seen = watch.borrow_and_update().clone();
        assert_eq!(seen.applied_index, Some(5));
        assert!(seen.image.topics.contains_key("orders"));

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
        // Applied after the snapshot: not in it, and not on disk.
        sm.apply([entry(1, 6, EntryPayload::Blank)]).await.unwrap();
        seen.image
    };
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let (applied, membership_state) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)));
    assert_eq!(membership_state.log_id(), &Some(log_id(1, 1)));
    assert_eq!(*sm.image(), *image);
    assert_eq!(*sm.image_watch().borrow().clone(), *image);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 5)));
}

#[tokio::test]
async fn installed_snapshot_replaces_the_state_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = StateMachineStore::open(leader_dir.path()).unwrap();
    leader.apply(image_entries()).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    {
        let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
        // Some state of its own that the snapshot replaces wholesale.
        follower
            .apply([entry(1, 1, EntryPayload::Normal(MetaCommand::NoOp))])
            .await
            .unwrap();
        let images = follower.image_watch();
        let mut data = follower.begin_receiving_snapshot().await.unwrap();
        *data = *snapshot.snapshot;
        follower
            .install_snapshot(&snapshot.meta, data)
            .await
            .unwrap();
        assert_eq!(*images.borrow().clone(), *leader.image());
        assert_eq!(follower.applied_index(), Some(5));
    }
    // A crash while writing the next snapshot leaves a stale temporary file: ignored.
    fs::write(
        durable::temp_path(&follower_dir.path().join(SNAPSHOT_FILE)),
        b"half a snapshot",
    )
    .unwrap();
    let mut follower = StateMachineStore::open(follower_dir.path()).unwrap();
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
    assert_eq!(*follower.image(), *leader.image());
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test]
async fn damaged_snapshot_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        sm.apply(image_entries()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let path = dir.path().join(SNAPSHOT_FILE);
    let good = fs::read(&path).unwrap();
    for at in [good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let err = StateMachineStore::open(dir.path()).unwrap_err();
        assert!(err.is_corruption(), "{err}");
    }
    fs::write(&path, &good[..good.len() - 10]).unwrap();
    assert!(
        StateMachineStore::open(dir.path())
            .unwrap_err()
            .is_corruption()
    );
    assert_eq!(
        MetadataImage::default(),
        *StateMachineStore::open(tempfile::tempdir().unwrap().path())
            .unwrap()
            .image()
    );
}

#[test]
fn records_must_be_non_empty_and_bounded() {
    let mut out = Vec::new();
    assert!(durable::encode_record(b"", MAX_RECORD_LEN, &mut out).is_err());
    assert!(durable::encode_record(b"12345", 4, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn replace_file_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vote");
    durable::replace_file(&path, b"one").unwrap();
    durable::replace_file(&path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert!(!durable::temp_path(&path).exists());
}

/// `MetaCommand` is internally tagged, which makes serde buffer its fields, and that buffer
/// cannot hold a `u128`: the 128-bit ids travel as hex strings so such entries replay.
#[tokio::test]
async fn commands_with_u128_fields_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append_durable(image_entries()).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, image_entries());
}
