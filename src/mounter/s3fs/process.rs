//! An s3fs process's life: its start (a child in its own process group, its output in a
//! private log, its keys in its environment), its readiness, what every holder knows of it
//! ([`Liveness`]), and its end (unmount, then kill-and-wait where it serves nobody).

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::watch;

use super::{unmount_and_rmdir, S3fsMounter, Shared, EXIT_GRACE};
use crate::mounter::sys::{self, Sys};
use crate::mounter::{bounded, Health, MountError, MountSpec};
use crate::{fsutil, layout};

/// How long a caller waits at least on a statvfs already in flight (see `Liveness::ask`).
const JOIN_GRACE: Duration = Duration::from_millis(200);

/// What every holder of an s3fs knows of it: whether it lives, whether it answered the last
/// probe in time, and a handle that signals that very process.
pub(super) struct Liveness<S: Sys> {
    sys: Arc<S>,
    pub(super) pid: u32,
    /// Taken at spawn or, for an adopted s3fs, after checking it serves the mount: signals go
    /// through it, so a reused PID is never signalled. Absent only where the kernel has no
    /// pidfds; then only our own unreaped child is ever signalled (its PID cannot be reused).
    pidfd: Option<S::Pidfd>,
    own_child: bool,
    /// Flips to false when our child is seen to exit.
    alive: AtomicBool,
    /// Set when a probe got no answer in time; cleared by the next answer.
    pub(super) slow: AtomicBool,
    /// The one statvfs of this s3fs's mount in flight, if any: every probe, Mount and
    /// adoption waits for it rather than starting another (a stopped s3fs would keep each).
    asking: Mutex<Option<Asking>>,
}

/// A statvfs in flight: when it started and where its answer will appear.
struct Asking {
    started: Instant,
    answer: watch::Receiver<Option<Result<(), nix::errno::Errno>>>,
}

impl<S: Sys> Liveness<S> {
    /// A fresh liveness of the s3fs `pid`, held by `pidfd`.
    pub(super) fn new(sys: Arc<S>, pid: u32, pidfd: Option<S::Pidfd>, own_child: bool) -> Self {
        Liveness {
            sys,
            pid,
            pidfd,
            own_child,
            alive: AtomicBool::new(true),
            slow: AtomicBool::new(false),
            asking: Mutex::new(None),
        }
    }

    /// Ask the mount at `path` (of this s3fs) whether it answers, waiting at most `limit`.
    /// At most one such call is in flight per s3fs: a caller joins the one running, and one
    /// still unanswered after `limit` is the answer itself (no new thread is started for a
    /// stopped s3fs, however often it is asked). `path` is used only by the call it starts.
    pub(super) async fn ask(
        &self,
        path: &Path,
        limit: Duration,
    ) -> Result<Result<(), nix::errno::Errno>, bounded::Unanswered> {
        let (started, mut answer) = {
            let mut asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
            let running = asking
                .as_ref()
                .filter(|a| a.answer.borrow().is_none() && a.answer.has_changed().is_ok());
            match running {
                Some(a) => (a.started, a.answer.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let (p, sy) = (path.to_path_buf(), self.sys.clone());
                    // The answer lands in the channel whenever the call returns; the receiver
                    // is dropped (a panicked call) only with the sender.
                    drop(bounded::spawn(move || {
                        let _ = tx.send(Some(sy.statvfs(&p)));
                    }));
                    let started = Instant::now();
                    *asking = Some(Asking {
                        started,
                        answer: rx.clone(),
                    });
                    (started, rx)
                }
            }
        };
        // A call stuck since before this caller came counts against its own start: once
        // older than `limit`, it answers "no answer" after a short look (time for a call
        // that is just returning, from an s3fs that runs again, to land).
        let until = (started + limit).max(Instant::now() + limit.min(JOIN_GRACE));
        let waited = tokio::time::timeout_at(until.into(), answer.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(v)) => Ok((*v).unwrap_or(Ok(()))),
            Ok(Err(_)) => Err(bounded::Unanswered::Panicked),
            Err(_) => Err(bounded::Unanswered::TimedOut(limit)),
        }
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
            && match &self.pidfd {
                Some(fd) => self.sys.pidfd_alive(fd),
                None => self.own_child || self.sys.pid_alive(self.pid),
            }
    }

    pub(super) fn health(&self) -> Health {
        if !self.is_alive() {
            Health::Stale
        } else if self.slow.load(Ordering::Acquire) {
            Health::Slow
        } else {
            Health::Ok
        }
    }

    /// SIGKILL, only for an s3fs proven dead or never ready: it serves nobody.
    pub(super) fn kill(&self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = self.sys.pidfd_signal(fd, Signal::SIGKILL);
            }
            None if self.own_child && self.alive.load(Ordering::Acquire) => {
                let _ = self.sys.kill(self.pid, Signal::SIGKILL);
            }
            None => {}
        }
    }
}

/// A running s3fs, ours or adopted from an earlier run of the daemon.
pub(super) struct Process<S: Sys> {
    pub(super) live: Arc<Liveness<S>>,
    /// Fires when our own child exits (absent for adopted processes, which are polled).
    pub(super) exited: Option<watch::Receiver<bool>>,
}

impl<S: Sys> Process<S> {
    pub(super) fn is_alive(&self) -> bool {
        self.live.is_alive()
    }

    /// Wait until it exits or `deadline` passes (see [`wait_exit`]); true when it exited.
    async fn wait_exit(&mut self, deadline: Instant) -> bool {
        let live = &self.live;
        wait_exit(|| live.is_alive(), self.exited.as_mut(), deadline).await
    }
}

/// How often a process that is not our child is looked at while waiting for its exit.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Wait until `alive` says the process is gone or `deadline` passes; true when it is gone.
/// Our own child's `exited` wakes the wait at once; any other process is polled.
pub(super) async fn wait_exit(
    alive: impl Fn() -> bool,
    mut exited: Option<&mut watch::Receiver<bool>>,
    deadline: Instant,
) -> bool {
    loop {
        if !alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        match exited.as_deref_mut() {
            Some(rx) => {
                let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(|v| *v)).await;
            }
            None => tokio::time::sleep(EXIT_POLL).await,
        }
    }
}

/// SIGKILL an s3fs proven ours (through its pidfd, see [`sys::Found::signal`]) and wait until
/// it is gone or `deadline` passes; true when it is gone.
pub(super) async fn kill_and_wait<S: Sys>(
    sy: &S,
    fd: &sys::Found<S::Pidfd>,
    deadline: Instant,
) -> bool {
    let _ = fd.signal(sy, Signal::SIGKILL);
    wait_exit(|| fd.is_alive(sy), None, deadline).await
}

impl<S: Sys> S3fsMounter<S> {
    /// Start s3fs for `spec` at `shared.path` and wait until the mount answers; `deadline`
    /// is the Mount's. The running s3fs is kept in `shared` and handed back.
    pub(super) async fn start(
        &self,
        spec: &MountSpec,
        name: &str,
        shared: &mut Shared<S>,
        deadline: Instant,
    ) -> Result<Arc<Liveness<S>>, MountError> {
        let path = shared.path.clone();
        self.clear_the_way(&path, deadline).await?;
        let logs = self.prepare_folders(spec, name, &path)?;
        let started = Instant::now();
        let process = self.spawn_s3fs(spec, name, &path, logs)?;
        let process = self.wait_ready(name, &path, process, started).await?;
        let live = process.live.clone();
        shared.process = Some(process);
        Ok(live)
    }

    /// Nothing may be left at `path` by an s3fs of ours nobody owns (a daemon that died while
    /// starting it): two s3fs on one path would break one-process-per-bucket. It serves no
    /// volume (`start` runs only when none is bound here), so it is killed. Only a process the
    /// kernel says is ours (see `sys::prove`) is: one that merely calls itself so, or runs as
    /// another user, is left alone and does not stop the Mount. A mount left there goes too.
    async fn clear_the_way(&self, path: &Path, deadline: Instant) -> Result<(), MountError> {
        let sy = &*self.sys;
        let owner = sys::Owner::of(sy, &self.cfg.program);
        loop {
            let (ours, others) = sys::our_s3fs(sy, &owner, path);
            if others > 0 {
                tracing::warn!(path = %path.display(), processes = others, "processes name this shared mount but are not bai-s3's s3fs (another user, another program); left alone");
            }
            let Some(fd) = ours.into_iter().next() else {
                break;
            };
            tracing::warn!(pid = fd.pid, path = %path.display(), "stopping an s3fs that no volume owns");
            kill_and_wait(sy, &fd, deadline).await;
            if Instant::now() >= deadline {
                return Err(MountError::InTheWay {
                    pid: fd.pid,
                    path: path.to_path_buf(),
                    after: self.cfg.mount_timeout,
                });
            }
        }
        if sys::mount_at(&sy.mounts(), path).is_some() {
            let (p, sy) = (path.to_path_buf(), self.sys.clone());
            bounded::run(self.cfg.mount_timeout, move || sy.unmount(&p))
                .await
                .map_err(|e| MountError::host(format!("unmounting {}", path.display()), e))?
                .map_err(MountError::Table)?;
        }
        Ok(())
    }

    /// The folders an s3fs of `name` needs (its mount folder, emptied; its staging and cache
    /// folders on the state folder's disk) and its log, opened twice: for stdout and stderr.
    fn prepare_folders(
        &self,
        spec: &MountSpec,
        name: &str,
        path: &Path,
    ) -> Result<(fs::File, fs::File), MountError> {
        // Made (or checked) once nothing is mounted there: a dead FUSE mount answers nothing.
        fsutil::sub_dir(
            &self.cfg.mount_root,
            &Path::new(layout::SHARED_DIR).join(name),
        )
        .map_err(|e| MountError::host("cannot create the shared mount folder", e))?;
        fsutil::sub_dir(&self.cfg.state_dir, &Self::tmp_rel(name))
            .map_err(|e| MountError::host("cannot create the s3fs staging folder", e))?;
        // What a Mount interrupted by a crash or a timeout wrote into the bare folder (a
        // folder creation that outlived its s3fs) would make s3fs refuse the folder as "not
        // empty" forever: it is no bucket's data, so it goes.
        clear_folder(path)
            .map_err(|e| MountError::host(format!("cannot clear {}", path.display()), e))?;
        let log_path = self.log_path(name);
        let log = open_log(&self.cfg.state_dir, name).map_err(|e| {
            MountError::host(format!("cannot open s3fs log {}", log_path.display()), e)
        })?;
        let log2 = log
            .try_clone()
            .map_err(|e| MountError::host("cannot open s3fs log", e))?;
        if spec.options.tuning.cache {
            fsutil::sub_dir(&self.cfg.state_dir, &Path::new(layout::CACHE).join(name))
                .map_err(|e| MountError::host("cannot create the cache folder", e))?;
        }
        Ok((log, log2))
    }

    /// Spawn the s3fs (keys in its environment, output in `logs`, its own process group) and
    /// watch it: its exit flips its liveness at once.
    fn spawn_s3fs(
        &self,
        spec: &MountSpec,
        name: &str,
        path: &Path,
        logs: (fs::File, fs::File),
    ) -> Result<Process<S>, MountError> {
        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(self.s3fs_args(spec, name, path))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("AWSACCESSKEYID", &spec.backend.access_key)
            .env("AWSSECRETACCESSKEY", spec.backend.secret_key.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::from(logs.0))
            .stderr(Stdio::from(logs.1))
            // Its own process group: a Ctrl-C or a signal to the daemon's group must not end
            // the mounts that containers use.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(ca) = &spec.backend.ca_file {
            cmd.env("CURL_CA_BUNDLE", ca);
        }
        let mut spawned = self.sys.spawn(cmd).map_err(|e| {
            let _ = fs::remove_dir(path);
            MountError::Spawn {
                program: self.cfg.program.clone(),
                error: e,
            }
        })?;
        let pid = spawned.pid;
        tracing::debug!(shared = name, pid, "s3fs started");
        // Taken by the spawn before anything could reap the child, so it is this process;
        // kept while it runs: it is never looked for by its command line again.
        let live = Arc::new(Liveness::new(
            self.sys.clone(),
            pid,
            spawned.pidfd.take(),
            true,
        ));

        // Watch the child: its exit flips `alive` at once, for Get and for the next Mount.
        let (tx, rx) = watch::channel(false);
        let (live2, name2) = (live.clone(), name.to_string());
        tokio::spawn(async move {
            let status = spawned.exited.await;
            live2.alive.store(false, Ordering::Release);
            tracing::debug!(shared = %name2, ?status, "s3fs exited");
            let _ = tx.send(true);
        });
        Ok(Process {
            live,
            exited: Some(rx),
        })
    }

    /// Wait until the mount of the s3fs started at `started` answers, at most the mount
    /// timeout; one that exits or never gets ready is taken down, with what its log says.
    async fn wait_ready(
        &self,
        name: &str,
        path: &Path,
        mut process: Process<S>,
        started: Instant,
    ) -> Result<Process<S>, MountError> {
        let log_path = self.log_path(name);
        let deadline = started + self.cfg.mount_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if !process.is_alive() {
                let said = log_tail(&log_path);
                let _ = unmount_and_rmdir(&*self.sys, path);
                return Err(MountError::Exited { said });
            }
            // s3fs checks the bucket inside FUSE's init, so the probe can block until that
            // check gives up: it must not hold the Mount past its deadline.
            let (p, sy) = (path.to_path_buf(), self.sys.clone());
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = matches!(
                bounded::run(left, move || sy.fuse_ready(&p)).await,
                Ok(true)
            );
            if ready {
                tracing::info!(
                    shared = name,
                    pid = process.live.pid,
                    ms = started.elapsed().as_millis() as u64,
                    "s3fs mount ready"
                );
                return Ok(process);
            }
            if Instant::now() >= deadline {
                // Not mounted (or not answering): it serves nobody.
                self.stop_process(path, &mut process, true).await;
                let said = log_tail(&log_path);
                return Err(MountError::NeverReady {
                    after: self.cfg.mount_timeout,
                    said,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Unmount a shared mount and wait for its s3fs to exit (reaped when it is our child).
    ///
    /// An s3fs that outlives its unmount still serves files opened before a lazy detach (a
    /// writer that has not closed yet): it is killed only when `dead` says it serves nobody
    /// (it never became ready, or its FUSE connection is gone), else left to exit by itself.
    pub(super) async fn stop_process(&self, path: &Path, process: &mut Process<S>, dead: bool) {
        let (p, sy) = (path.to_path_buf(), self.sys.clone());
        match bounded::run(self.cfg.mount_timeout, move || sy.unmount(&p)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "unmounting shared s3fs mount"),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "unmounting shared s3fs mount")
            }
        }
        if dead {
            // It serves nobody: nothing to flush, so no grace.
            process.live.kill();
        }
        if !process.wait_exit(Instant::now() + EXIT_GRACE).await {
            if !dead {
                tracing::warn!(
                    pid = process.live.pid,
                    "s3fs still runs after its mount was detached (files opened before are still being served); it is left to exit by itself"
                );
                return;
            }
            tracing::warn!(
                pid = process.live.pid,
                "s3fs serves nothing and did not exit after unmount; killing it"
            );
            process.live.kill();
            // Only our own child is waited for: its exit is reported, an adopted one's polled.
            if process.exited.is_some() {
                process.wait_exit(Instant::now() + EXIT_GRACE).await;
            }
        }
        let _ = self.unmount_and_rmdir_within(path, EXIT_GRACE).await;
    }
}

/// Empty a folder that is not a mount, without following any symlink in it (std's
/// `remove_dir_all` never does). A missing folder is fine.
fn clear_folder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return Ok(());
    };
    // Never empty a folder that is (still) a mount: that would be a bucket's data.
    if me.dev() != parent.dev() || !me.is_dir() {
        return Err(std::io::Error::other(
            "it is still a mount point or not a folder",
        ));
    }
    let entries = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        tracing::warn!(path = %e.path().display(), "removing what an interrupted mount left in a mount folder");
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The s3fs log of the shared mount `name`, in `<state_dir>/logs` (made 0700), opened without
/// following a link and emptied for this start. Appended to, as s3fs writes it through
/// `logfile` too.
fn open_log(state_dir: &Path, name: &str) -> std::io::Result<fs::File> {
    let dir = fsutil::sub_dir(state_dir, Path::new(layout::LOGS)).map_err(std::io::Error::other)?;
    let f = fsutil::open_private_file(dir.as_fd(), &format!("{name}.log"))?;
    f.set_len(0)?;
    Ok(f)
}

/// The last lines s3fs wrote, for an error message: its warnings and errors without their
/// timestamps (its start-up notes, and the note that it set the log level we asked for, say
/// nothing about why a mount failed).
pub(super) fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((stamp, rest)) if stamp.len() >= 20 && stamp.ends_with('Z') => rest.trim(),
            _ => l.trim(),
        })
        .filter(|l| !l.is_empty() && !l.starts_with("[INF]") && !l.contains("LowSetLogLevel"))
        .collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(nothing)".to_string()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_warnings_without_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s3fs.log");
        fs::write(
            &p,
            "2026-11-25T20:26:59.833Z [INF] curl.cpp:InitMimeType(434): Loaded mime information\n\
             2026-11-25T20:26:59.834Z [CRT] s3fs_logger.cpp:LowSetLogLevel(240): change debug level from [CRT] to [WAN] \n\
             2026-11-25T20:26:59.834Z [ERR] curl.cpp:RequestPerform(2416): ### CURLE_COULDNT_CONNECT\n\
             s3fs: could not determine how to establish security credentials.\n",
        )
        .unwrap();
        assert_eq!(
            log_tail(&p),
            "[ERR] curl.cpp:RequestPerform(2416): ### CURLE_COULDNT_CONNECT | \
             s3fs: could not determine how to establish security credentials."
        );
        assert_eq!(log_tail(&dir.path().join("none")), "(nothing)");
    }
}
