//! Everything the bench starts, for the clean-up at the end, on failure, on a panic and on
//! SIGINT/SIGTERM/SIGHUP: the work folder, the spawned processes and the SeaweedFS server.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::support;
use crate::Res;

struct Registry {
    work: Option<PathBuf>,
    procs: Vec<Child>,
    /// Stopped last, once nothing mounted from it is left (a live s3fs would hang on it).
    weed: Option<support::S3Server>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    work: None,
    procs: Vec::new(),
    weed: None,
});

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the bench's work folder in /tmp and records it: from now on, the clean-up removes it.
pub fn make_work() -> Res<PathBuf> {
    let work = tempfile::Builder::new()
        .prefix("bai-s3-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?
        .keep();
    reg().work = Some(work.clone());
    Ok(work)
}

/// Starts a private SeaweedFS (the test support's) and records it for the clean-up; returns it
/// as the backend `default`.
pub fn start_weed() -> Res<support::Backend> {
    let weed = support::weed_bin();
    if !weed.exists() {
        return Err(format!(
            "{} missing: run scripts/deps.sh bench",
            weed.display()
        ));
    }
    let srv = std::panic::catch_unwind(support::S3Server::start_private)
        .map_err(|_| "SeaweedFS did not start (see above)".to_string())?;
    let backend = srv.backend("default");
    let mut r = reg();
    if r.work.is_none() {
        drop(r);
        drop(srv);
        return Err("not keeping SeaweedFS: the bench is stopping".into());
    }
    r.weed = Some(srv);
    Ok(backend)
}

/// Starts `cmd` with a clean environment (no AWS_CA_BUNDLE, SSL_CERT_FILE...), in its own
/// process group, ended with SIGTERM if the bench dies, and records it for the clean-up.
pub fn spawn(name: &str, cmd: &mut Command, log: &Path, env: &[(&str, &str)]) -> Res<u32> {
    let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
            Ok(())
        });
    }
    // Spawn under the registry's lock: once the clean-up has begun, nothing new starts.
    let mut r = reg();
    if r.work.is_none() {
        return Err(format!("not starting {name}: the bench is stopping"));
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let pid = child.id();
    r.procs.push(child);
    Ok(pid)
}

fn unregister(pid: u32) -> Option<Child> {
    let mut r = reg();
    let i = r.procs.iter().position(|c| c.id() == pid)?;
    Some(r.procs.remove(i))
}

pub fn exited(pid: u32) -> bool {
    let mut r = reg();
    match r.procs.iter_mut().find(|c| c.id() == pid) {
        Some(c) => !matches!(c.try_wait(), Ok(None)),
        None => true,
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn terminate(mut child: Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn stop_pid(pid: u32, grace: Duration) {
    if let Some(c) = unregister(pid) {
        terminate(c, grace);
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = support::mounts_under(dir)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

/// Pids of live s3fs processes whose command line mentions `dir`.
pub fn s3fs_pids(dir: &Path) -> Vec<i32> {
    support::s3fs_pids_mentioning(dir)
}

pub fn kill_s3fs_under(dir: &Path) {
    let pids = s3fs_pids(dir);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while !s3fs_pids(dir).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in s3fs_pids(dir) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn cleanup() {
    // Held for the whole clean-up, so that a second caller waits until it is done.
    static CLEANING: Mutex<()> = Mutex::new(());
    let _one = CLEANING.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = reg();
    let Some(work) = r.work.take() else { return };
    let procs = std::mem::take(&mut r.procs);
    let weed = r.weed.take();
    drop(r);
    eprintln!("[bench] cleaning up {}", work.display());
    for c in procs.into_iter().rev() {
        terminate(c, Duration::from_secs(10));
    }
    unmount_under(&work);
    kill_s3fs_under(&work);
    unmount_under(&work);
    if let Some(w) = weed {
        // Its Drop stops weed, removes its sockets and its folder; it panics if weed stays.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(w))).is_err() {
            eprintln!("[bench] SeaweedFS did not stop cleanly");
        }
    }
    if mounts_under(&work).is_empty() {
        if let Err(e) = fs::remove_dir_all(&work) {
            eprintln!("[bench] could not remove {}: {e}", work.display());
        }
    } else {
        eprintln!(
            "[bench] mounts left under {}, not removing it: {:?}",
            work.display(),
            mounts_under(&work)
        );
    }
}

pub struct CleanupOnDrop;

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread (call before any other thread starts) and
/// handles them in one thread: clean up, then exit.
pub fn handle_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().expect("block signals");
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("[bench] {sig}: stopping");
            cleanup();
            std::process::exit(130);
        }
    });
}
