//! The volume driver: the volume table, holder counts and their persistence, between the
//! protocol (which calls it) and the mounter (which it calls).
//!
//! Invariants:
//! - A volume is mounted exactly while some caller ID holds it (or during `--unmount-delay`
//!   after the last one left); one mount per volume however many holders.
//! - Calls on one volume are serialised by that volume's lock; different volumes never wait
//!   for each other. Get and List read a snapshot and never wait for a lock or the network.
//! - Every change is written to the state file before it is acknowledged; when writing fails,
//!   the change is rolled back and the caller gets an error.
//!
//! One file a concern: `table` (a volume's record, holders and the snapshot Get reads),
//! `mounting` (Mount and Unmount, their batching, the unmount delay), `recovery` (restore at
//! start, health checks and repair), `status` (what Get, List and the metrics see); here the
//! driver itself, Create and Remove.

mod mounting;
mod recovery;
mod status;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::backends::{Backend, Backends};
use crate::error::{Error, Result};
use crate::mounter::{MountSpec, Mounter};
use crate::options::{validate_volume_name, VolumeOptions};
use crate::s3check::BucketChecker;
use crate::state::{Store, VolumeRecord};

pub use status::{Problem, Shown, VolumeEntry, VolumeInfo, VolumeStatus};
use table::{VolState, Volume};

/// Settings of the driver that come from the daemon's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mount_root: PathBuf,
    pub unmount_delay: Duration,
}

/// The driver. Shared as `Arc<Driver<M>>` by the server, the restore and the health tasks.
pub struct Driver<M: Mounter> {
    mounter: M,
    checker: Box<dyn BucketChecker>,
    backends: Backends,
    store: Store,
    volumes: DashMap<String, Arc<Volume>>,
    /// Serialises Create's check-then-insert of one name against another Create.
    create_lock: tokio::sync::Mutex<()>,
    settings: Settings,
    /// Closed until restore at start-up has finished: Mount, Unmount and Remove wait for it.
    restored: watch::Receiver<bool>,
    restored_tx: watch::Sender<bool>,
    shutting_down: AtomicBool,
    /// Bumped after every change List shows (a volume added or removed, a mount point come or
    /// gone), so that the server can answer List from a cached reply while it is unchanged.
    list_gen: Arc<AtomicU64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl<M: Mounter> Driver<M> {
    /// Build the driver from the persisted state. Records whose options no longer parse are
    /// kept in the file and reported, never dropped.
    pub fn new(
        mounter: M,
        checker: Box<dyn BucketChecker>,
        backends: Backends,
        store: Store,
        settings: Settings,
    ) -> Arc<Self> {
        let list_gen = Arc::new(AtomicU64::new(0));
        let config = backends.path().display().to_string();
        let volumes = DashMap::new();
        for (name, rec) in store.records() {
            let v = Volume::from_record(&name, &rec, &config, &settings.mount_root, &list_gen);
            volumes.insert(name, Arc::new(v));
        }
        let (restored_tx, restored) = watch::channel(false);
        Arc::new(Driver {
            mounter,
            checker,
            backends,
            store,
            volumes,
            create_lock: tokio::sync::Mutex::new(()),
            settings,
            restored,
            restored_tx,
            shutting_down: AtomicBool::new(false),
            list_gen,
        })
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>> {
        self.volumes
            .get(name)
            .map(|v| v.clone())
            .ok_or_else(|| Error::NoSuchVolume(name.to_string()))
    }

    /// Every volume of the table, taken out of it so that no shard lock is held across an
    /// await.
    fn all_volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes.iter().map(|e| e.value().clone()).collect()
    }

    async fn wait_restored(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mut rx = self.restored.clone();
        let _ = rx.wait_for(|done| *done).await;
        Ok(())
    }

    fn persist(&self, name: &str, record: Option<VolumeRecord>, durable: bool) -> Result<()> {
        self.store
            .update(name, record, durable)
            .map_err(|source| Error::Persist {
                path: self.store.path().display().to_string(),
                source,
            })
    }

    /// The backend called `name` in the backends file as it is now.
    fn backend(&self, name: &str) -> Result<Backend> {
        let backends = self.backends.current();
        backends
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownBackend {
                name: name.to_string(),
                path: self.backends.path().display().to_string(),
                known: backends.keys().cloned().collect(),
                problem: self.backends.problem(),
            })
    }

    fn spec(&self, vol: &Volume) -> Result<MountSpec> {
        let options = vol.options.clone().map_err(|refused| Error::Unresolvable {
            name: vol.name.clone(),
            refused,
        })?;
        Ok(MountSpec {
            volume: vol.name.clone(),
            backend: self.backend(&options.backend)?,
            options,
            target: vol.target.clone(),
        })
    }

    /// `/VolumeDriver.Create`: validate, check the bucket, register. Idempotent for the same
    /// options; refused for different ones.
    pub async fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> Result<()> {
        validate_volume_name(name)?;
        let config = self.backends.path().display().to_string();
        let options = VolumeOptions::parse(name, opts, &config)?;
        if let Some(existing) = self.volumes.get(name).map(|v| v.clone()) {
            return same_or_conflict(&existing, &options);
        }
        let backend = self.backend(&options.backend)?;
        self.checker
            .check(
                &options.backend,
                &backend,
                &options.bucket,
                options.create_bucket,
            )
            .await
            .map_err(Error::Bucket)?;

        let _guard = self.create_lock.lock().await;
        if let Some(existing) = self.volumes.get(name).map(|v| v.clone()) {
            return same_or_conflict(&existing, &options);
        }
        let vol = Volume::new(
            name,
            options.to_map(),
            Ok(options),
            rfc3339(SystemTime::now()),
            &self.settings.mount_root,
            &self.list_gen,
        );
        let rec = vol.record(&VolState::default());
        self.persist(name, Some(rec), true)?;
        self.volumes.insert(name.to_string(), Arc::new(vol));
        self.list_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// `/VolumeDriver.Remove`: deregister; the bucket and its objects are never touched.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.wait_restored().await?;
        let vol = self.volume(name)?;
        let mut st = vol.state.lock().await;
        if st.removed {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        let holders: u64 = st.holders.values().sum();
        if holders > 0 {
            return Err(Error::InUse {
                name: name.to_string(),
                holders,
            });
        }
        {
            // With Create's lock: a Create of this name either sees the volume (and succeeds
            // before it goes) or registers it anew after, never acknowledged and then lost.
            let _guard = self.create_lock.lock().await;
            self.persist(name, None, true)?;
            st.removed = true;
            self.volumes.remove(name);
            self.list_gen.fetch_add(1, Ordering::Release);
        }
        if st.mounted {
            // A delayed unmount was pending: Remove ends the wait.
            self.unmount_now(&vol, &mut st).await;
        }
        Ok(())
    }

    /// Why the backends file on disk is not in use, if it is not (for the start-up log).
    pub fn backends_problem(&self) -> Option<String> {
        self.backends.problem()
    }
}

fn same_or_conflict(existing: &Volume, options: &VolumeOptions) -> Result<()> {
    match &existing.options {
        Ok(o) if o == options => Ok(()),
        Ok(o) => Err(Error::Conflict {
            name: existing.name.clone(),
            differences: o.differences(options),
        }),
        Err(refused) => Err(Error::Unresolvable {
            name: existing.name.clone(),
            refused: refused.clone(),
        }),
    }
}

#[cfg(test)]
mod tests;
