//! The real mount layer: s3fs processes, shared per bucket and mount settings, and one bind
//! mount per volume.
//!
//! Layout under the mount root:
//! - `.s3fs/<backend>-<bucket>-<hash>`: one s3fs mount per [`Identity`] (backend and all its
//!   settings, bucket, uid, gid, umask, tuning, read-only); `<hash>` is a keyed SHA-256 of all
//!   of it, so different identities never share a process. A read-only identity's mount is
//!   `.s3fs/<backend>-<bucket>-ro-<hash>`, made by an s3fs started with `-o ro`.
//! - `<volume>`: the volume's mount point, a bind of the shared mount's root or of its
//!   `<prefix>` folder, also made read-only by a remount when the volume is `ro`.
//!
//! s3fs runs in the foreground (`-f`) as a child in its own process group, with its output in
//! a private log file, so that it outlives this daemon (a crash or restart must not take
//! containers' mounts down) and its own words explain a failed mount. Credentials reach it
//! through its environment, which only root can read, never through argv.
//!
//! The parts: `identity` (what makes one s3fs, its name, its command line), `process` (an
//! s3fs's start, readiness, liveness and end), `mount` (Mount and Unmount), `recovery` (adopt
//! and sweep after a restart); this module holds the mounter's tables and ties them together.

mod identity;
mod mount;
mod process;
mod recovery;

pub use identity::Identity;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sys::{self, Linux, Sys, TableError};
use super::{bounded, Adoption, Health, MountError, MountSpec, Mounter, Usage};
use crate::{fsutil, layout};
use process::{Liveness, Process};

/// The mount table's type of an s3fs mount (and of every bind of one).
const S3FS_TYPE: &str = "fuse.s3fs";

/// How long s3fs gets to exit after its mount is gone.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a health probe waits for a mount to answer before calling it slow.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long health probes share one reading of the mount table. Reading it costs about 2 ms
/// with 1,000 buckets mounted (2,000 entries) and every probe of a round needs it: read per
/// probe, a round took seconds of CPU and held the runtime's workers meanwhile.
const PROBE_TABLE_AGE: Duration = Duration::from_secs(1);

/// Settings of the real mounter.
#[derive(Debug, Clone)]
pub struct S3fsConfig {
    pub mount_root: PathBuf,
    /// s3fs logs (one per shared mount) and disk caches live here, private to root.
    pub state_dir: PathBuf,
    /// A mount that is not ready within this time fails.
    pub mount_timeout: Duration,
    /// The s3fs program (a name looked up in PATH, or a path).
    pub program: String,
    /// MiB that s3fs keeps free on the state folder's disk (its `ensure_diskfree`): staging
    /// files of open files and the cache stop growing there (`--min-disk-free`).
    pub min_disk_free: u64,
    /// Most s3fs processes at once (`--max-mounts`); 0: no limit.
    pub max_mounts: usize,
    /// Keys the hash of shared-mount names ([`fsutil::load_or_create_key`]).
    pub name_key: [u8; fsutil::KEY_LEN],
}

/// One shared s3fs mount and the volume targets bound to it.
struct Shared<S: Sys> {
    path: PathBuf,
    /// What the running s3fs was started for (None until a Mount joins it, e.g. an adopted one
    /// whose name, a keyed hash of its identity, was all that was known).
    identity: Option<Identity>,
    process: Option<Process<S>>,
    users: HashSet<PathBuf>,
}

/// A volume target's shared mount: its name and its s3fs's liveness.
type Binding<S> = (String, Arc<Liveness<S>>);

/// The s3fs mounter; `S` is the system it runs on (a fake one in tests).
pub struct S3fsMounter<S: Sys = Linux> {
    cfg: S3fsConfig,
    sys: Arc<S>,
    /// Shared mounts by name; the async lock serialises starting and stopping one s3fs while
    /// different buckets proceed in parallel.
    shared: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shared<S>>>>>,
    /// Which shared mount each volume target is bound to, and that s3fs's liveness flag.
    targets: Mutex<HashMap<PathBuf, Binding<S>>>,
    /// The shared mounts that take a place under `--max-mounts`.
    slots: Mutex<Slots>,
    /// The mount table as the health probes last read it (see [`PROBE_TABLE_AGE`]).
    probe_table: Mutex<Option<(Instant, Arc<Vec<sys::MountEntry>>)>>,
}

/// The shared mounts with an s3fs (running, being started, or dead and not yet taken down):
/// what `--max-mounts` counts. Kept apart from the per-mount locks so that a Mount checks the
/// count without waiting for another bucket's start.
#[derive(Default)]
struct Slots {
    names: HashSet<String>,
    /// The 90 % warning was logged and the count has not fallen below 90 % since.
    warned: bool,
}

impl S3fsMounter {
    /// A mounter with nothing mounted yet (see [`Mounter::adopt`] for what an earlier run left).
    pub fn new(cfg: S3fsConfig) -> Self {
        S3fsMounter::with_sys(cfg, Arc::new(Linux))
    }
}

impl<S: Sys> S3fsMounter<S> {
    /// A mounter over the system `sys` (the real one is [`S3fsMounter::new`]).
    pub fn with_sys(cfg: S3fsConfig, sys: Arc<S>) -> Self {
        S3fsMounter {
            cfg,
            sys,
            shared: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            slots: Mutex::new(Slots::default()),
            probe_table: Mutex::new(None),
        }
    }

    /// The mount table for a health probe: read at most once per [`PROBE_TABLE_AGE`] for all
    /// the probes of a round. Only a target found in it is taken as mounted; a miss is read
    /// again, so that a mount made since is never called stale.
    fn probe_table(&self) -> Arc<Vec<sys::MountEntry>> {
        let mut cached = self.probe_table.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((at, table)) if at.elapsed() < PROBE_TABLE_AGE => table.clone(),
            _ => {
                let table = Arc::new(self.sys.mounts());
                *cached = Some((Instant::now(), table.clone()));
                table
            }
        }
    }

    /// Take a place under `--max-mounts` for the shared mount `name` before its s3fs starts
    /// (a mount that has one, e.g. a dead s3fs started again, keeps it).
    fn claim_slot(&self, name: &str, bucket: &str) -> Result<(), MountError> {
        let max = self.cfg.max_mounts;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.names.contains(name) {
            return Ok(());
        }
        if max > 0 && slots.names.len() >= max {
            return Err(MountError::Limit {
                bucket: bucket.to_string(),
                mounted: slots.names.len(),
                max,
            });
        }
        slots.names.insert(name.to_string());
        let mounted = slots.names.len();
        if max > 0 && !slots.warned && mounted * 10 >= max * 9 {
            slots.warned = true;
            tracing::warn!(
                mounted,
                max,
                "s3fs mounts at 90 % of --max-mounts (BAI_S3_MAX_MOUNTS): Mounts of further buckets will soon be refused"
            );
        }
        Ok(())
    }

    /// Make `name`'s place under `--max-mounts` follow whether it has an s3fs (called with its
    /// lock held, after anything that starts, adopts or stops one).
    fn sync_slot(&self, name: &str, shared: &Shared<S>) {
        let max = self.cfg.max_mounts;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if shared.process.is_some() {
            slots.names.insert(name.to_string());
        } else {
            slots.names.remove(name);
        }
        if slots.names.len() * 10 < max * 9 {
            slots.warned = false;
        }
    }

    fn shared_root(&self) -> PathBuf {
        layout::shared_root(&self.cfg.mount_root)
    }

    /// The shared mount `name`'s entry, made on first use.
    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<Shared<S>>> {
        let mut map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Shared {
                    path: self.shared_root().join(name),
                    identity: None,
                    process: None,
                    users: HashSet::new(),
                }))
            })
            .clone()
    }

    /// [`unmount_and_rmdir`] on the FUSE pool (an unmount may block on a FUSE path), waiting
    /// at most `limit`.
    async fn unmount_and_rmdir_within(
        &self,
        path: &Path,
        limit: Duration,
    ) -> Result<Result<(), TableError>, bounded::Unanswered> {
        let (p, sy) = (path.to_path_buf(), self.sys.clone());
        bounded::run(limit, move || unmount_and_rmdir(&*sy, &p)).await
    }
}

/// Unmount `path` and remove its folder, a mount point the daemon made (only when empty: never
/// anything with content). The unmount's outcome; the folder goes where it can.
fn unmount_and_rmdir<S: Sys>(sy: &S, path: &Path) -> Result<(), TableError> {
    let r = sy.unmount(path);
    let _ = fs::remove_dir(path);
    r
}

impl<S: Sys> Mounter for S3fsMounter<S> {
    async fn mount(&self, spec: &MountSpec) -> Result<String, MountError> {
        self.mount_volume(spec).await
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        self.unmount_volume(target).await
    }

    async fn adopt(&self, target: &Path, recorded: Option<&str>) -> Adoption {
        self.adopt_target(target, recorded).await
    }

    fn health(&self, target: &Path) -> Health {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        match targets.get(target) {
            None => Health::NotMounted,
            Some((_, live)) => live.health(),
        }
    }

    async fn probe(&self, target: &Path) -> Health {
        let live = {
            let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            match targets.get(target) {
                None => return Health::NotMounted,
                Some((_, live)) => live.clone(),
            }
        };
        if !live.is_alive() {
            return Health::Stale;
        }
        // A target that is no mount any more (someone unmounted it) is no longer served. A
        // target missing from the shared reading (mounted since) is looked up afresh.
        if sys::mount_at(&self.probe_table(), target).is_none()
            && sys::mount_at(&self.sys.mounts(), target).is_none()
        {
            return Health::Stale;
        }
        match live.ask(target, PROBE_TIMEOUT).await {
            Ok(Err(e)) if sys::is_gone(e) => Health::Stale,
            Err(bounded::Unanswered::TimedOut(_)) => {
                live.slow.store(true, Ordering::Release);
                Health::Slow
            }
            _ => {
                live.slow.store(false, Ordering::Release);
                Health::Ok
            }
        }
    }

    async fn sweep(&self, keep: &[PathBuf]) {
        self.sweep_root(keep).await
    }

    /// The s3fs processes held for shared mounts: bound to a volume, or held by an entry not
    /// locked right now (one being started or stopped is counted at the next call). Each is
    /// read by PID, then checked alive through its pidfd, so the reading was about it.
    fn usage(&self) -> Usage {
        let mut held: HashMap<u32, Arc<Liveness<S>>> = HashMap::new();
        for (_, live) in self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            held.insert(live.pid, live.clone());
        }
        let entries: Vec<_> = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for e in entries {
            if let Ok(s) = e.try_lock() {
                if let Some(p) = &s.process {
                    held.insert(p.live.pid, p.live.clone());
                }
            }
        }
        let mut usage = Usage::default();
        for (pid, live) in held {
            let resident = self.sys.resident_bytes(pid);
            if live.is_alive() {
                usage.s3fs_processes += 1;
                usage.s3fs_resident_bytes += resident.unwrap_or(0);
            }
        }
        usage
    }
}

#[cfg(test)]
mod seam_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Backend;
    use crate::options::VolumeOptions;

    pub(super) fn spec(pairs: &[(&str, &str)]) -> MountSpec {
        let opts = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let backend: Backend = toml::from_str(
            "endpoint = \"http://127.0.0.1:1\"\naccess-key = \"AK\"\nsecret-key = \"TOPSECRET\"\n",
        )
        .unwrap();
        MountSpec {
            volume: "v".into(),
            options: VolumeOptions::parse("vol", &opts, "f").unwrap(),
            backend,
            target: "/mnt/v".into(),
        }
    }
}
