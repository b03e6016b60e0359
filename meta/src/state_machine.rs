//! The metadata quorum's state machine: openraft's [`RaftStateMachine`] over the
//! [`MetadataImage`]. This module owns a state machine directory holding one file, `snapshot`:
//! the last snapshot, written atomically ([`crate::durable::replace_file`]) as two
//! [`crate::durable`] records, the snapshot's metadata and then its data (serde_json of the last
//! applied log id, the last membership and the image: exactly the bytes sent to followers).
//!
//! Applying does not write to disk: the state is the last snapshot plus the log entries after
//! it, which openraft re-applies at startup up to the committed log id the log store kept. A
//! snapshot is built from a copy of the state (the image is shared, not copied) and written
//! before it is reported; an installed snapshot is written before the state is replaced, so a
//! crash half way leaves the old snapshot and the old state, never a mix. Snapshot writes are
//! serialized, and a snapshot never replaces a newer one.
//!
//! The broker reads the image through [`StateMachineStore::image_watch`] (or
//! [`StateMachineStore::applied_watch`], which adds the last applied index): `tokio::sync::watch`
//! channels updated after every applied batch and every installed snapshot. The image is
//! copy-on-write: a batch that changes it copies it once while readers hold the previous version.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use crate::durable;
use crate::error::{Error, snapshot_error};
use crate::image::MetadataImage;
use crate::log_store::LogStore;
use crate::types::{BrokerId, ControllerNode, MetaResponse, TypeConfig};

/// The snapshot file's name in the state machine directory.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// The largest snapshot data record (1 GiB).
pub const MAX_SNAPSHOT_LEN: usize = 1 << 30;

type Membership = StoredMembership<BrokerId, ControllerNode>;
type Meta = SnapshotMeta<BrokerId, ControllerNode>;

/// Opens the metadata quorum's stores under `dir`: the log in `dir/log`, the state machine in
/// `dir/state`. Blocks on file I/O.
pub fn open_stores(dir: &Path) -> Result<(LogStore, StateMachineStore), Error> {
    let log = LogStore::open(dir.join("log"))?;
    let state = StateMachineStore::open(dir.join("state"))?;
    Ok((log, state))
}

/// The image as of one point of the log, as the broker sees it.
#[derive(Debug, Clone, Default)]
pub struct AppliedImage {
    /// The index of the last applied log entry (`None` before anything is applied).
    pub applied_index: Option<u64>,
    /// The image.
    pub image: Arc<MetadataImage>,
}

/// A snapshot's data, for writing.
#[derive(Debug, Serialize)]
struct SnapshotBodyRef<'a> {
    last_applied: Option<LogId<BrokerId>>,
    membership: &'a Membership,
    image: &'a MetadataImage,
}

/// A snapshot's data, as read.
#[derive(Debug, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<BrokerId>>,
    membership: Membership,
    image: MetadataImage,
}

impl SnapshotBody {
    /// Decodes snapshot data and checks it matches `meta`.
    fn decode(data: &[u8], meta: &Meta) -> Result<Self, Error> {
        let body: Self = serde_json::from_slice(data).map_err(|e| {
            Error::InvalidSnapshot(format!(
                "snapshot {} cannot be decoded: {e}",
                meta.snapshot_id
            ))
        })?;
        if body.last_applied != meta.last_log_id || body.membership != meta.last_membership {
            return Err(Error::InvalidSnapshot(format!(
                "snapshot {} holds state up to {:?} with membership {:?}, \
                 its metadata says {:?} and {:?}",
                meta.snapshot_id,
                body.last_applied,
                body.membership,
                meta.last_log_id,
                meta.last_membership
            )));
        }
        Ok(body)
    }
}

/// The current snapshot: its metadata and data.
#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }

    /// The snapshot file's contents.
    fn encode_file(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(self.data.len() + 256);
        durable::encode_json(&self.meta, "the snapshot metadata", &mut out)?;
        durable::encode_record(&self.data, MAX_SNAPSHOT_LEN, &mut out)?;
        Ok(out)
    }
}

/// Runs blocking work on the snapshot at `path` off the async executor's threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Io {
            op: "encode, decode or write",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Writes `snapshot` to `path` and makes it current, unless the current snapshot is newer (or
/// `force`, for an installed snapshot, which replaces whatever is there).
async fn store_snapshot(
    slot: &Mutex<Option<StoredSnapshot>>,
    path: &Path,
    snapshot: StoredSnapshot,
    force: bool,
) -> Result<bool, Error> {
    let mut current = slot.lock().await;
    let newer = current
        .as_ref()
        .is_none_or(|c| c.meta.last_log_id < snapshot.meta.last_log_id);
    if !force && !newer {
        tracing::debug!(
            snapshot = %snapshot.meta,
            "a snapshot at least as new is stored; not replacing it"
        );
        return Ok(false);
    }
    let target = path.to_path_buf();
    let snapshot = blocking(path, move || {
        let bytes = snapshot.encode_file()?;
        durable::replace_file(&target, &bytes)?;
        Ok(snapshot)
    })
    .await?;
    tracing::info!(
        snapshot = %snapshot.meta,
        bytes = snapshot.data.len(),
        "stored a metadata snapshot"
    );
    *current = Some(snapshot);
    Ok(true)
}

/// A fresh snapshot id: the last log id and the time, unique enough to tell transfers apart.
fn snapshot_id(last: Option<LogId<BrokerId>>) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    match last {
        Some(id) => format!("{}-{}-{millis}", id.leader_id, id.index),
        None => format!("none-{millis}"),
    }
}

/// The metadata quorum's state machine (see the module documentation).
#[derive(Debug)]
pub struct StateMachineStore {
    dir: PathBuf,
    last_applied: Option<LogId<BrokerId>>,
    membership: Membership,
    image: Arc<MetadataImage>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    applied: watch::Sender<AppliedImage>,
    images: watch::Sender<Arc<MetadataImage>>,
}

impl StateMachineStore {
    /// Opens (creating it if needed) the state machine in `dir`, restoring the state from the
    /// snapshot file if there is one. Blocks on file I/O.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        durable::create_dir_durable(&dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut store = Self {
            dir,
            last_applied: None,
            membership: Membership::default(),
            image: Arc::new(MetadataImage::default()),
            current: Arc::new(Mutex::new(None)),
            applied: watch::Sender::new(AppliedImage::default()),
            images: watch::Sender::new(Arc::default()),
        };
        if let Some(file) = durable::read_whole_file(&path, 2, MAX_SNAPSHOT_LEN)? {
            let [meta_record, data_record] = file.records.as_slice() else {
                return Err(Error::corrupt(
                    &path,
                    0,
                    "a snapshot file holds two records",
                ));
            };
            let meta: Meta =
                durable::decode_json(file.payload(meta_record), &path, meta_record.position)?;
            let data = file.payload(data_record).to_vec();
            let body = SnapshotBody::decode(&data, &meta)
                .map_err(|e| Error::corrupt(&path, data_record.position, e.to_string()))?;
            tracing::info!(
                snapshot = %meta,
                dir = %store.dir.display(),
                "restored the metadata state from its snapshot"
            );
            store.replace_state(body);
            store.current = Arc::new(Mutex::new(Some(StoredSnapshot { meta, data })));
        }
        Ok(store)
    }

    /// The state machine directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A receiver of the image, updated after every applied batch and installed snapshot. Take
    /// it before handing the store to openraft; it stays valid after.
    pub fn image_watch(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.images.subscribe()
    }

    /// Like [`StateMachineStore::image_watch`], with the index of the last applied entry that
    /// the image reflects.
    pub fn applied_watch(&self) -> watch::Receiver<AppliedImage> {
        self.applied.subscribe()
    }

    /// The current image.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image)
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|id| id.index)
    }

    fn replace_state(&mut self, body: SnapshotBody) {
        self.last_applied = body.last_applied;
        self.membership = body.membership;
        self.image = Arc::new(body.image);
        self.publish();
    }

    fn publish(&self) {
        self.applied.send_replace(AppliedImage {
            applied_index: self.applied_index(),
            image: Arc::clone(&self.image),
        });
        self.images.send_replace(Arc::clone(&self.image));
    }

    /// Applies one entry and says what it answers.
    fn apply_entry(&mut self, entry: Entry<TypeConfig>) -> MetaResponse {
        let log_id = entry.log_id;
        self.last_applied = Some(log_id);
        match entry.payload {
            EntryPayload::Blank => MetaResponse::Done,
            EntryPayload::Normal(command) => {
                Arc::make_mut(&mut self.image).apply(log_id.index, &command)
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                MetaResponse::Done
            }
        }
    }

    /// Replaces the state with an installed snapshot, after writing it.
    async fn install(&mut self, meta: &Meta, data: Vec<u8>) -> Result<(), Error> {
        let check = meta.clone();
        let (body, data) = blocking(&self.dir.join(SNAPSHOT_FILE), move || {
            SnapshotBody::decode(&data, &check).map(|body| (body, data))
        })
        .await?;
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        store_snapshot(&self.current, &self.dir.join(SNAPSHOT_FILE), snapshot, true).await?;
        tracing::info!(snapshot = %meta, "installed a metadata snapshot");
        self.replace_state(body);
        Ok(())
    }
}

/// Builds a snapshot of the state as of the moment it was created.
#[derive(Debug)]
pub struct SnapshotBuilder {
    path: PathBuf,
    last_applied: Option<LogId<BrokerId>>,
    membership: Membership,
    image: Arc<MetadataImage>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl SnapshotBuilder {
    /// Serializes and stores the snapshot.
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot_id(self.last_applied),
        };
        let (last_applied, membership, image) = (
            self.last_applied,
            self.membership.clone(),
            Arc::clone(&self.image),
        );
        let data = blocking(&self.path, move || {
            let body = SnapshotBodyRef {
                last_applied,
                membership: &membership,
                image: &image,
            };
            serde_json::to_vec(&body).map_err(|source| Error::Encode {
                what: "the metadata snapshot",
                source,
            })
        })
        .await?;
        let snapshot = StoredSnapshot { meta, data };
        let built = snapshot.to_snapshot();
        store_snapshot(&self.current, &self.path, snapshot, false).await?;
        Ok(built)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<BrokerId>> {
        self.build().await.map_err(snapshot_error(ErrorVerb::Write))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<BrokerId>>, Membership), StorageError<BrokerId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError<BrokerId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let responses: Vec<MetaResponse> =
            entries.into_iter().map(|e| self.apply_entry(e)).collect();
        if !responses.is_empty() {
            self.publish();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            path: self.dir.join(SNAPSHOT_FILE),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            image: Arc::clone(&self.image),
            current: Arc::clone(&self.current),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<BrokerId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<BrokerId>> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(snapshot_error(ErrorVerb::Write))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<BrokerId>> {
        Ok(self
            .current
            .lock()
            .await
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}
