//! The Mount and Unmount path: the shared s3fs (joined, or started), the volume's prefix
//! resolved inside the bucket, and the bind at the volume's mount point, all within one
//! deadline; and on Unmount, the bind taken away and the s3fs stopped with its last volume.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::identity::Identity;
use super::process::Liveness;
use super::{unmount_and_rmdir, S3fsMounter, Shared};
use crate::mounter::sys::{self, Sys};
use crate::mounter::{bounded, resolve, MountError, MountSpec};
use crate::{fsutil, layout};

/// Phases of a Mount's blocking work (see [`S3fsMounter::bind_volume`]).
const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const DONE: u8 = 2;

/// What the blocking part of a Mount needs, owned, for the FUSE pool.
struct BindWork {
    shared_path: PathBuf,
    mount_root: PathBuf,
    volume: String,
    target: PathBuf,
    /// Read-only binds are prepared in a private staging folder (see `sys::bind`).
    stage_root: PathBuf,
    ro: bool,
    prefix: Option<String>,
    bucket: String,
}

impl<S: Sys> S3fsMounter<S> {
    /// See [`crate::mounter::Mounter::mount`].
    pub(super) async fn mount_volume(&self, spec: &MountSpec) -> Result<String, MountError> {
        // One deadline for the whole Mount, whatever part of it is slow.
        let deadline = Instant::now() + self.cfg.mount_timeout;
        let name = self.shared_name(spec);
        let shared = self.entry(&name);
        let mut s = shared.lock().await;
        let live = self.running_s3fs(spec, &name, &mut s, deadline).await?;
        let joined = join(&mut s, spec, &name);
        match self
            .bind_volume(spec, s.path.clone(), joined, deadline)
            .await
        {
            Ok(()) => {
                s.users.insert(spec.target.clone());
                self.targets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.target.clone(), (name.clone(), live));
                Ok(name)
            }
            Err(e) => {
                if s.users.is_empty() {
                    if let Some(mut p) = s.process.take() {
                        let path = s.path.clone();
                        // No volume is bound to it: it serves nobody.
                        self.stop_process(&path, &mut p, true).await;
                    }
                    self.sync_slot(&name, &s);
                }
                Err(e)
            }
        }
    }

    /// The shared mount's s3fs, alive: the one running when it answers (or fails with an
    /// error of the store's, which is not a dead mount), else a new one in place of a dead
    /// one. One that does not answer in time is slow, not dead: it is left to its volumes and
    /// the Mount fails.
    async fn running_s3fs(
        &self,
        spec: &MountSpec,
        name: &str,
        s: &mut Shared<S>,
        deadline: Instant,
    ) -> Result<Arc<Liveness<S>>, MountError> {
        if let Some(p) = &s.process {
            let live = p.live.clone();
            let verdict = if live.is_alive() {
                live.ask(&s.path, self.cfg.mount_timeout).await
            } else {
                Ok(Err(nix::errno::Errno::ENOTCONN))
            };
            match verdict {
                Ok(Ok(())) => {
                    live.slow.store(false, Ordering::Release);
                    return Ok(live);
                }
                // An error other than a gone connection is the store's, not a dead mount.
                Ok(Err(e)) if !sys::is_gone(e) => return Ok(live),
                Ok(Err(_)) | Err(bounded::Unanswered::Panicked) => {
                    tracing::warn!(shared = %name, pid = live.pid, "shared s3fs is dead; starting a new one");
                    if let Some(mut dead) = s.process.take() {
                        let path = s.path.clone();
                        self.stop_process(&path, &mut dead, true).await;
                    }
                    // Volumes still bound to the dead mount are stale; each is repaired on its
                    // next Mount. They no longer count as users of the new process.
                    s.users.clear();
                }
                Err(bounded::Unanswered::TimedOut(_)) => {
                    // Slow is not dead: the volumes on it keep their mounts and writers.
                    live.slow.store(true, Ordering::Release);
                    return Err(MountError::SharedUnanswered {
                        bucket: spec.options.bucket.clone(),
                        after: self.cfg.mount_timeout,
                    });
                }
            }
        }
        self.claim_slot(name, &spec.options.bucket)?;
        let started = self.start(spec, name, s, deadline).await;
        self.sync_slot(name, s);
        started
    }

    /// Resolve the volume's prefix inside the bucket's mount and bind it at the volume's
    /// target, on the FUSE pool (both reach into the s3fs's mount), answering by `deadline`.
    /// `joined` is whether the volume may join this s3fs at all (checked there, so that its
    /// refusal is undone like any other).
    ///
    /// The work may outlive the Mount's deadline (a lookup stuck on a slow store). The phase
    /// makes sure none of it lands after the Mount answered: a late bind is never made, or is
    /// undone. (A folder the resolver creates lands inside the bucket or, once the s3fs is
    /// gone, nowhere: it works on fds of the FUSE mount.)
    async fn bind_volume(
        &self,
        spec: &MountSpec,
        shared_path: PathBuf,
        joined: Result<(), MountError>,
        deadline: Instant,
    ) -> Result<(), MountError> {
        let work = BindWork {
            shared_path,
            mount_root: self.cfg.mount_root.clone(),
            volume: spec.volume.clone(),
            target: spec.target.clone(),
            stage_root: self.cfg.state_dir.join(layout::STAGE),
            ro: spec.options.ro,
            prefix: spec.options.prefix.clone(),
            bucket: spec.options.bucket.clone(),
        };
        let phase = Arc::new(AtomicU8::new(RUNNING));
        let (ph, sy) = (phase.clone(), self.sys.clone());
        let mut task = bounded::spawn(move || -> Result<(), MountError> {
            joined?;
            resolve_and_bind(&*sy, &ph, &work)
        });
        let result = match tokio::time::timeout_at(deadline.into(), &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                if phase
                    .compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Ok(Err(MountError::Deadline {
                        after: self.cfg.mount_timeout,
                    }))
                } else {
                    // It finished in the same instant: its result stands.
                    task.await
                }
            }
        };
        match result {
            Ok(r) => r,
            Err(_) => Err(MountError::Task(bounded::Unanswered::Panicked)),
        }
    }

    /// See [`crate::mounter::Mounter::unmount`].
    pub(super) async fn unmount_volume(&self, target: &Path) -> Result<(), MountError> {
        let r = self
            .unmount_and_rmdir_within(target, self.cfg.mount_timeout)
            .await;
        self.release(target).await;
        match r {
            Ok(r) => r.map_err(MountError::Table),
            Err(e) => Err(MountError::host(
                format!("unmount of {}", target.display()),
                e,
            )),
        }
    }

    /// Release `target`'s use of its shared mount; stop the s3fs when it was the last user.
    async fn release(&self, target: &Path) {
        let entry = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        let Some((name, _)) = entry else { return };
        let shared = self.entry(&name);
        let mut s = shared.lock().await;
        s.users.remove(target);
        if s.users.is_empty() {
            if let Some(mut p) = s.process.take() {
                let path = s.path.clone();
                self.stop_process(&path, &mut p, false).await;
                tracing::info!(shared = %name, pid = p.live.pid, "s3fs stopped: no volume uses it");
            }
            self.sync_slot(&name, &s);
            drop(s);
            let mut map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cur) = map.get(&name) {
                // Drop the entry unless a Mount got hold of it meanwhile.
                if Arc::strong_count(cur) <= 2
                    && cur
                        .try_lock()
                        .map(|s| s.users.is_empty() && s.process.is_none())
                        .unwrap_or(false)
                {
                    map.remove(&name);
                }
            }
        }
    }
}

/// Whether `spec` may join the shared mount `s`: joining compares the whole identity, not only
/// the name. The first volume of an s3fs (or of an adopted one, known by name only) sets it.
fn join<S: Sys>(s: &mut Shared<S>, spec: &MountSpec, name: &str) -> Result<(), MountError> {
    let identity = Identity::of(spec);
    match &s.identity {
        Some(running) if *running != identity => Err(MountError::OtherSettings {
            name: name.to_string(),
            volume: spec.volume.clone(),
        }),
        _ => {
            s.identity = Some(identity);
            Ok(())
        }
    }
}

/// The blocking part of a Mount (see [`S3fsMounter::bind_volume`]): the prefix resolved and
/// bound from the fd that walk returned (a read-only volume never creates it), checking at
/// each step that the Mount has not been answered meanwhile.
fn resolve_and_bind<S: Sys>(sy: &S, phase: &AtomicU8, w: &BindWork) -> Result<(), MountError> {
    let late = || MountError::GivenUp;
    let cancelled = || phase.load(Ordering::Acquire) == CANCELLED;
    if cancelled() {
        return Err(late());
    }
    let source = resolve::open_prefix(&w.shared_path, &w.bucket, w.prefix.as_deref(), w.ro)?;
    if cancelled() {
        return Err(late());
    }
    let target_fd = prepare_target(sy, &w.mount_root, &w.volume)?;
    let shown = (
        w.shared_path.join(w.prefix.as_deref().unwrap_or("")),
        w.target.clone(),
    );
    let stage = w.ro.then_some((w.stage_root.as_path(), w.volume.as_str()));
    sy.bind_view(sys::BindView {
        source: source.as_fd(),
        target: target_fd.as_fd(),
        shown: (&shown.0, &shown.1),
        read_only: stage,
        view: (&w.target, &w.shared_path, w.prefix.as_deref()),
    })
    .inspect_err(|_| {
        let _ = fs::remove_dir(&w.target);
    })?;
    if phase
        .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        let _ = unmount_and_rmdir(sy, &w.target);
        return Err(late());
    }
    Ok(())
}

/// Make `<mount_root>/<volume>` an empty folder that is not a mount point, whatever an earlier
/// run left there (a dead FUSE mount would make `mkdir` fail with "file exists"), and open it
/// without following a link.
fn prepare_target<S: Sys>(
    sy: &S,
    mount_root: &Path,
    volume: &str,
) -> Result<std::os::fd::OwnedFd, MountError> {
    let target = mount_root.join(volume);
    // Mounts may be stacked; a few rounds clear them, and a target that stays mounted after
    // that is reported rather than looped on.
    for _ in 0..8 {
        if sys::mount_at(&sy.mounts(), &target).is_none() {
            break;
        }
        sy.unmount(&target).map_err(MountError::Table)?;
    }
    if sys::mount_at(&sy.mounts(), &target).is_some() {
        return Err(MountError::StillMounted { target });
    }
    let root = fsutil::open_dir(mount_root)
        .map_err(|e| MountError::host("cannot open the mount root", e))?;
    fsutil::open_beneath(root.as_fd(), Path::new(volume), Some(0o755), true).map_err(|e| {
        MountError::host(
            format!(
                "cannot create mount point {} in {}",
                target.display(),
                mount_root.display()
            ),
            e,
        )
    })
}
