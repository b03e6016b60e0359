//! openraft's storage test suite against the real stores, each case in a fresh directory.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use strom_meta::log_store::LogStore;
use strom_meta::state_machine::{StateMachineStore, open_stores};
use strom_meta::types::{BrokerId, TypeConfig};
use tempfile::TempDir;

/// Opens both stores in a new temporary directory, which lives as long as the returned guard.
struct FreshStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStores {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<BrokerId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, state) = open_stores(dir.path()).unwrap();
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(FreshStores).unwrap();
}
