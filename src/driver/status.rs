//! What Path, Get, List and the metrics see of the volumes: typed status read from each
//! volume's snapshot, never waiting for a volume's lock or the network.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::table::Volume;
use super::Driver;
use crate::backends::Backend;
use crate::error::{unresolvable, Error, Result};
use crate::mounter::{Health, Mounter};
use crate::options::{OptionError, VolumeOptions};

/// What Get shows of one volume.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub name: String,
    /// Empty when not mounted.
    pub mountpoint: String,
    pub created_at: String,
    pub status: VolumeStatus,
}

/// A volume's state as `docker volume inspect` shows it, typed: the driver says what holds,
/// the protocol layer decides how Docker sees it.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub settings: Shown,
    pub mounted: bool,
    pub holders: u64,
    pub health: Health,
    /// When `mounted` last changed.
    pub since: SystemTime,
    /// The last failed mount attempt.
    pub last_error: Option<Arc<Error>>,
    /// Why a new mount of this volume would fail, while its existing mounts go on.
    pub problem: Option<Problem>,
}

/// Why a new mount of a volume would fail while its existing mounts go on: shown by Get before
/// anyone tries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    #[error("backend {backend:?} is not configured in {path}{}", .file_problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    NoBackend {
        backend: String,
        path: String,
        /// Why the file on disk is not in use, when it is not.
        file_problem: Option<String>,
    },
    #[error("{}", unresolvable(.0))]
    Refused(OptionError),
}

/// A volume's options as this version reads them, or the stored ones it refuses (shown as
/// they are, so that an operator sees which bucket a stuck volume is).
#[derive(Debug, Clone)]
pub enum Shown {
    Parsed(VolumeOptions),
    Refused(BTreeMap<String, String>),
}

/// What List shows of one volume.
#[derive(Debug, Clone)]
pub struct VolumeEntry {
    pub name: String,
    /// Empty when not mounted.
    pub mountpoint: String,
    pub created_at: String,
}

impl<M: Mounter> Driver<M> {
    /// `/VolumeDriver.Path`: the mount point while mounted, else empty.
    pub fn path(&self, name: &str) -> Result<String> {
        let vol = self.volume(name)?;
        Ok(vol.mountpoint(vol.is_mounted()))
    }

    /// `/VolumeDriver.Get`: from memory, whether or not the object store answers.
    pub fn get(&self, name: &str) -> Result<VolumeInfo> {
        let vol = self.volume(name)?;
        Ok(self.info_with(&vol, &self.backends.current()))
    }

    /// Changes with everything [`Driver::list_entries`] shows; read it before building a List
    /// reply and keep the reply for as long as it stays the same.
    pub fn list_generation(&self) -> u64 {
        self.list_gen.load(Ordering::Acquire)
    }

    /// `/VolumeDriver.List`, sorted by name: names, mount points and creation times only.
    /// `Status` is Get's (`docker volume inspect`); leaving it out keeps List cheap with
    /// thousands of volumes (Backend.AI lists at every kernel start).
    pub fn list_entries(&self) -> Vec<VolumeEntry> {
        let mut v: Vec<VolumeEntry> = self
            .volumes
            .iter()
            .map(|e| {
                let vol = e.value();
                VolumeEntry {
                    name: vol.name.clone(),
                    mountpoint: vol.mountpoint(vol.is_mounted()),
                    created_at: vol.created_at.clone(),
                }
            })
            .collect();
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The mounter's s3fs processes and their memory, for the metrics: the driver holds the
    /// mounter, and nothing else needs to reach it.
    pub fn usage(&self) -> crate::mounter::Usage {
        self.mounter.usage()
    }

    /// Every volume with its full status, sorted by name (for metrics and tests).
    pub fn list(&self) -> Vec<VolumeInfo> {
        let backends = self.backends.current();
        let mut v: Vec<VolumeInfo> = self
            .volumes
            .iter()
            .map(|e| self.info_with(e.value(), &backends))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// `vol` as Get shows it, judged against the backends file as `backends`.
    fn info_with(&self, vol: &Volume, backends: &BTreeMap<String, Backend>) -> VolumeInfo {
        let view = vol.view();
        let health = if view.mounted {
            match self.mounter.health(&vol.target) {
                Health::NotMounted => Health::Stale,
                h => h,
            }
        } else {
            Health::NotMounted
        };
        let (settings, problem) = self.settings_shown(vol, backends);
        let status = VolumeStatus {
            settings,
            mounted: view.mounted,
            holders: view.holders,
            health,
            since: view.since,
            last_error: view.last_error,
            problem,
        };
        VolumeInfo {
            name: vol.name.clone(),
            mountpoint: vol.mountpoint(view.mounted),
            created_at: vol.created_at.clone(),
            status,
        }
    }

    /// The volume's options as shown, and why a new mount of it would fail, if it would.
    fn settings_shown(
        &self,
        vol: &Volume,
        backends: &BTreeMap<String, Backend>,
    ) -> (Shown, Option<Problem>) {
        match &vol.options {
            Ok(o) => (
                Shown::Parsed(o.clone()),
                (!backends.contains_key(&o.backend)).then(|| Problem::NoBackend {
                    backend: o.backend.clone(),
                    path: self.backends.path().display().to_string(),
                    file_problem: self.backends.problem(),
                }),
            ),
            Err(refused) => (
                Shown::Refused(vol.raw.clone()),
                Some(Problem::Refused(refused.clone())),
            ),
        }
    }
}
