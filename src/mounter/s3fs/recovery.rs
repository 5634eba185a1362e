//! After a restart: adopting the live mounts an earlier run left to its volumes, and sweeping
//! away what it left that no volume holds. Only what the kernel says is ours is touched (see
//! `sys::prove`): s3fs mounts in our own folders, run by our uid from the configured program.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::{kill_and_wait, wait_exit, Liveness, Process};
use super::{S3fsMounter, EXIT_GRACE, S3FS_TYPE};
use crate::layout;
use crate::mounter::sys::{self, Sys};
use crate::mounter::{bounded, Adoption};

/// How long adoption at start waits for a mount to answer (no answer: adopted as slow).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a sweep must leave alone.
struct Kept<'a> {
    /// Every held volume's target.
    targets: HashSet<&'a Path>,
    /// Every shared mount this run knows (adopted or mounting), locked or not.
    in_use: HashSet<PathBuf>,
    /// Who bai-s3's s3fs processes are (`--s3fs`).
    owner: sys::Owner,
}

impl<S: Sys> S3fsMounter<S> {
    /// See [`crate::mounter::Mounter::adopt`].
    pub(super) async fn adopt_target(&self, target: &Path, recorded: Option<&str>) -> Adoption {
        let table = self.sys.mounts();
        let Some(bound) = sys::mount_at(&table, target) else {
            return Adoption::Absent;
        };
        // The mount table is the truth: the shared s3fs mount with the bind's device.
        let shared_root = self.shared_root();
        let Some(shared_mount) = table
            .iter()
            .rev()
            .find(|m| {
                m.dev == bound.dev
                    && m.fs_type == S3FS_TYPE
                    && m.mount_point.parent() == Some(shared_root.as_path())
            })
            .cloned()
        else {
            return Adoption::Dead;
        };
        let Some(name) = shared_mount
            .mount_point
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return Adoption::Dead;
        };
        if recorded.is_some_and(|r| r != name) {
            tracing::warn!(target = %target.display(), recorded, found = %name, "the state names another shared mount than the mount table; going by the mount table");
        }
        let shared = self.entry(&name);
        let mut s = shared.lock().await;
        let live = match s.process.as_ref() {
            Some(p) if p.is_alive() => p.live.clone(),
            _ => {
                // Only an s3fs the kernel says is ours (uid, executable, through its pidfd);
                // a process that only calls itself so is not adopted, so never signalled.
                let owner = sys::Owner::of(&*self.sys, &self.cfg.program);
                let Some(found) = sys::s3fs_of(&*self.sys, &owner, &shared_mount.mount_point)
                else {
                    return Adoption::Dead;
                };
                // Without a pidfd it is watched by PID and never signalled.
                let live = Arc::new(Liveness::new(
                    self.sys.clone(),
                    found.pid,
                    found.pidfd,
                    false,
                ));
                s.path = shared_mount.mount_point.clone();
                s.process = Some(Process {
                    live: live.clone(),
                    exited: None,
                });
                live
            }
        };
        match live.ask(target, ADOPT_TIMEOUT).await {
            Ok(Err(e)) if sys::is_gone(e) => return Adoption::Dead,
            Err(_) => live.slow.store(true, Ordering::Release),
            Ok(_) => {}
        }
        s.users.insert(target.to_path_buf());
        self.sync_slot(&name, &s);
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.to_path_buf(), (name.clone(), live.clone()));
        tracing::info!(target = %target.display(), shared = %name, pid = live.pid, "live mount adopted");
        Adoption::Live { shared: name }
    }

    /// See [`crate::mounter::Mounter::sweep`]: staging binds, then volume binds, then the
    /// shared mounts they may hold, then s3fs processes without a mount, then empty folders.
    pub(super) async fn sweep_root(&self, keep: &[PathBuf]) {
        let shared_root = self.shared_root();
        let kept = Kept {
            targets: keep.iter().map(PathBuf::as_path).collect(),
            in_use: {
                let map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                map.keys().map(|n| shared_root.join(n)).collect()
            },
            owner: sys::Owner::of(&*self.sys, &self.cfg.program),
        };
        let table = self.sys.mounts();
        // A held volume's target, and any s3fs it is a view of, is never touched.
        let kept_devs: HashSet<String> = table
            .iter()
            .filter(|m| kept.targets.contains(m.mount_point.as_path()))
            .map(|m| m.dev.clone())
            .collect();
        self.sweep_stage(&table).await;
        self.sweep_binds(&table, &kept).await;
        self.sweep_shared(&kept, &kept_devs).await;
        self.sweep_strays(&kept).await;
        self.sweep_folders(&kept);
    }

    /// [`super::unmount_and_rmdir`] for the sweep, bounded: a failure is only logged.
    async fn sweep_unmount(&self, p: PathBuf) {
        match self.unmount_and_rmdir_within(&p, EXIT_GRACE).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweep"),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "sweep: unmount"),
        }
    }

    /// Read-only staging binds of a run that died half-way through a Mount.
    async fn sweep_stage(&self, table: &[sys::MountEntry]) {
        let stage_root = self.cfg.state_dir.join(layout::STAGE);
        for m in table.iter().rev() {
            if m.mount_point.parent() == Some(stage_root.as_path()) && m.fs_type == S3FS_TYPE {
                self.sweep_unmount(m.mount_point.clone()).await;
            }
        }
    }

    /// Volume binds no held volume uses; only s3fs ones (binds of an s3fs of ours) in the
    /// mount root, where anything else is left alone.
    async fn sweep_binds(&self, table: &[sys::MountEntry], kept: &Kept<'_>) {
        let root = &self.cfg.mount_root;
        let shared_root = self.shared_root();
        for m in table.iter().rev() {
            if m.mount_point.parent() == Some(root.as_path())
                && !kept.targets.contains(m.mount_point.as_path())
                && m.mount_point != shared_root
            {
                if m.fs_type == S3FS_TYPE {
                    tracing::info!(path = %m.mount_point.display(), "removing a mount left by an earlier run");
                    let (p, sy) = (m.mount_point.clone(), self.sys.clone());
                    match bounded::run(EXIT_GRACE, move || sy.unmount(&p)).await {
                        Ok(Ok(())) => {}
                        other => {
                            tracing::warn!(path = %m.mount_point.display(), ?other, "sweep: unmount")
                        }
                    }
                } else {
                    tracing::warn!(path = %m.mount_point.display(), fs = %m.fs_type, "a mount in the mount root that is not bai-s3's is left alone");
                }
            }
        }
    }

    /// Shared s3fs mounts no volume holds: unmounted, and their s3fs (proven ours) given time
    /// to exit by itself.
    async fn sweep_shared(&self, kept: &Kept<'_>, kept_devs: &HashSet<String>) {
        let sy = &*self.sys;
        let shared_root = self.shared_root();
        for m in sy.mounts().iter().rev() {
            if m.mount_point.parent() == Some(shared_root.as_path())
                && !kept.in_use.contains(&m.mount_point)
                && m.fs_type == S3FS_TYPE
                && !kept_devs.contains(&m.dev)
            {
                tracing::info!(path = %m.mount_point.display(), "stopping an s3fs left by an earlier run");
                let s3fs = sys::s3fs_of(sy, &kept.owner, &m.mount_point);
                self.sweep_unmount(m.mount_point.clone()).await;
                // Its mount is gone: it exits by itself, unless it still serves files opened
                // before a lazy detach; then it is left to finish them.
                if let Some(fd) = s3fs {
                    let deadline = Instant::now() + EXIT_GRACE;
                    if !wait_exit(|| fd.is_alive(sy), None, deadline).await {
                        tracing::warn!(
                            pid = fd.pid,
                            "s3fs still runs after its mount was detached; left to exit by itself"
                        );
                    }
                }
            }
        }
    }

    /// An s3fs started by a run that died before its mount was ready: it has no mount, so it
    /// serves nobody, and its mount might still appear.
    async fn sweep_strays(&self, kept: &Kept<'_>) {
        let sy = &*self.sys;
        let shared_root = self.shared_root();
        let mounted: HashSet<PathBuf> = sy.mounts().into_iter().map(|m| m.mount_point).collect();
        let strays = sy.processes_with_arg(&|a| {
            (a.parent() == Some(shared_root.as_path())
                && !kept.in_use.contains(a)
                && !mounted.contains(a))
            .then(|| a.to_path_buf())
        });
        for (pid, path) in strays {
            // Argv found it; only the kernel's word makes it ours (see `sys::prove`).
            let Some(fd) = sys::prove(sy, &kept.owner, pid, &path) else {
                continue;
            };
            tracing::info!(pid = fd.pid, path = %path.display(), "stopping an s3fs that no volume owns");
            kill_and_wait(sy, &fd, Instant::now() + EXIT_GRACE).await;
            self.sweep_unmount(path).await;
        }
    }

    /// Empty folders left behind (never anything with content: no recursive removal).
    fn sweep_folders(&self, kept: &Kept<'_>) {
        let shared_root = self.shared_root();
        for dir in [&self.cfg.mount_root, &shared_root] {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p != shared_root
                        && !kept.targets.contains(p.as_path())
                        && !kept.in_use.contains(&p)
                    {
                        let _ = fs::remove_dir(&p);
                    }
                }
            }
        }
    }
}
