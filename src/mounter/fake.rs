//! An in-memory mounter for fast unit tests of the driver's counting and recovery logic. It
//! records every call and can be told to fail, or to report a mount dead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{Adoption, Health, MountError, MountSpec, Mounter, Usage};

/// A mounter that mounts nothing, for unit tests.
#[derive(Default)]
pub struct FakeMounter {
    pub mounted: Mutex<HashMap<PathBuf, Health>>,
    pub mounts: AtomicUsize,
    pub unmounts: AtomicUsize,
    pub fail_next: AtomicBool,
    /// Each mount takes this long, so tests can race calls against it.
    pub delay: Mutex<Duration>,
    /// Targets that `adopt` finds alive.
    pub alive_after_restart: Mutex<Vec<PathBuf>>,
    /// What [`Mounter::usage`] says each live mount's pretended s3fs holds in memory.
    pub resident_each: AtomicU64,
}

impl FakeMounter {
    /// Pretend the s3fs under `target` died.
    pub fn kill(&self, target: &Path) {
        self.mounted
            .lock()
            .unwrap()
            .insert(target.to_path_buf(), Health::Stale);
    }
}

impl Mounter for FakeMounter {
    async fn mount(&self, spec: &MountSpec) -> Result<String, MountError> {
        let d = *self.delay.lock().unwrap();
        tokio::time::sleep(d).await;
        self.mounts.fetch_add(1, Ordering::SeqCst);
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(MountError::Exited {
                said: "fake failure".into(),
            });
        }
        self.mounted
            .lock()
            .unwrap()
            .insert(spec.target.clone(), Health::Ok);
        Ok(format!("shared-{}", spec.options.bucket))
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        self.unmounts.fetch_add(1, Ordering::SeqCst);
        self.mounted.lock().unwrap().remove(target);
        Ok(())
    }

    async fn adopt(&self, target: &Path, shared: Option<&str>) -> Adoption {
        let alive = self
            .alive_after_restart
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == target);
        if !alive {
            return Adoption::Absent;
        }
        self.mounted
            .lock()
            .unwrap()
            .insert(target.to_path_buf(), Health::Ok);
        Adoption::Live {
            shared: shared.unwrap_or("adopted").to_string(),
        }
    }

    fn health(&self, target: &Path) -> Health {
        self.mounted
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(Health::NotMounted)
    }

    async fn probe(&self, target: &Path) -> Health {
        self.health(target)
    }

    async fn sweep(&self, _keep: &[PathBuf]) {}

    /// One pretended s3fs per mount that is not stale.
    fn usage(&self) -> Usage {
        let live = self
            .mounted
            .lock()
            .unwrap()
            .values()
            .filter(|h| matches!(h, Health::Ok | Health::Slow))
            .count() as u64;
        Usage {
            s3fs_processes: live,
            s3fs_resident_bytes: live * self.resident_each.load(Ordering::SeqCst),
        }
    }
}
