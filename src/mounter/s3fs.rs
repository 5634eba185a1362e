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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::watch;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::sys::{self, Linux, Sys};
use super::{bounded, resolve, Adoption, Health, MountError, MountSpec, Mounter};
use crate::backends::Secret;
use crate::options::Tuning;
use crate::{fsutil, layout};

/// Phases of a Mount's blocking work (see `mount`).
const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const DONE: u8 = 2;
/// The mount table's type of an s3fs mount (and of every bind of one).
const S3FS_TYPE: &str = "fuse.s3fs";

/// How long s3fs gets to exit after its mount is gone.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How long a health probe waits for a mount to answer before calling it slow.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits at least on a statvfs already in flight (see `Liveness::ask`).
const JOIN_GRACE: Duration = Duration::from_millis(200);
/// How long adoption at start waits for a mount to answer (no answer: adopted as slow).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Everything that makes one s3fs process: volumes share a process exactly when all of it is
/// equal. The secret key is part of it (a rotated key gets a new process), and reaches the
/// name only through a hash keyed with the host's own key. Read-only is part of it too: a
/// read-only volume gets an s3fs mounted read-only (`-o ro`), whose superblock refuses writes
/// whatever a runtime does to the flags of a bind of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    backend: String,
    endpoint: String,
    region: String,
    path_style: bool,
    ca_file: Option<PathBuf>,
    access_key: String,
    secret_key: Secret,
    bucket: String,
    uid: u32,
    gid: u32,
    umask: u32,
    tuning: Tuning,
    read_only: bool,
}

impl Identity {
    pub fn of(spec: &MountSpec) -> Self {
        let (o, b) = (&spec.options, &spec.backend);
        Identity {
            backend: o.backend.clone(),
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            path_style: b.path_style,
            ca_file: b.ca_file.clone(),
            access_key: b.access_key.clone(),
            secret_key: b.secret_key.clone(),
            bucket: o.bucket.clone(),
            uid: o.uid,
            gid: o.gid,
            umask: o.umask,
            tuning: o.tuning,
            read_only: o.ro,
        }
    }

    /// The shared mount's name: `<backend>-<bucket>-<32 hex digits>` (`<backend>-<bucket>-ro-<32
    /// hex digits>` when read-only), readable, the same in every run on this host (so a
    /// restarted daemon joins its mounts), and different for every other identity: the digits
    /// are HMAC-SHA256 (keyed with `key`) over every field, each length-prefixed, so no two
    /// identities encode alike. A read-only identity has one field more, so a writable one
    /// hashes as it would without the read-only field. Live mounts of an earlier version are
    /// adopted by the shared mount each volume's record keeps, whatever names this version
    /// gives.
    pub fn name(&self, key: &[u8]) -> String {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        let t = &self.tuning;
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| format!("some:{}", p.display()));
        let fields: [&[u8]; 19] = [
            b"bai-s3 shared mount v2",
            self.backend.as_bytes(),
            self.endpoint.as_bytes(),
            self.region.as_bytes(),
            if self.path_style { b"1" } else { b"0" },
            ca.as_deref().unwrap_or("none").as_bytes(),
            self.access_key.as_bytes(),
            self.secret_key.expose().as_bytes(),
            self.bucket.as_bytes(),
            &self.uid.to_be_bytes(),
            &self.gid.to_be_bytes(),
            &self.umask.to_be_bytes(),
            if t.cache { b"1" } else { b"0" },
            &t.parallel_count.to_be_bytes(),
            &t.multipart_size.to_be_bytes(),
            &t.stat_cache_expire.to_be_bytes(),
            if t.negative_cache { b"1" } else { b"0" },
            if t.compat_dir { b"1" } else { b"0" },
            b"end",
        ];
        let read_only: &[&[u8]] = if self.read_only { &[b"read-only"] } else { &[] };
        for f in fields.iter().chain(read_only) {
            mac.update(&(f.len() as u64).to_be_bytes());
            mac.update(f);
        }
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let ro = if self.read_only { "ro-" } else { "" };
        format!("{}-{}-{ro}{hex}", self.backend, self.bucket)
    }
}

/// What every holder of an s3fs knows of it: whether it lives, whether it answered the last
/// probe in time, and a handle that signals that very process.
struct Liveness<S: Sys> {
    sys: Arc<S>,
    pid: u32,
    /// Taken at spawn or, for an adopted s3fs, after checking it serves the mount: signals go
    /// through it, so a reused PID is never signalled. Absent only where the kernel has no
    /// pidfds; then only our own unreaped child is ever signalled (its PID cannot be reused).
    pidfd: Option<S::Pidfd>,
    own_child: bool,
    /// Flips to false when our child is seen to exit.
    alive: AtomicBool,
    /// Set when a probe got no answer in time; cleared by the next answer.
    slow: AtomicBool,
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
    fn new(sys: Arc<S>, pid: u32, pidfd: Option<S::Pidfd>, own_child: bool) -> Self {
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
    async fn ask(
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

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
            && match &self.pidfd {
                Some(fd) => self.sys.pidfd_alive(fd),
                None => self.own_child || self.sys.pid_alive(self.pid),
            }
    }

    fn health(&self) -> Health {
        if !self.is_alive() {
            Health::Stale
        } else if self.slow.load(Ordering::Acquire) {
            Health::Slow
        } else {
            Health::Ok
        }
    }

    /// SIGKILL, only for an s3fs proven dead or never ready: it serves nobody.
    fn kill(&self) {
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
struct Process<S: Sys> {
    live: Arc<Liveness<S>>,
    /// Fires when our own child exits (absent for adopted processes, which are polled).
    exited: Option<watch::Receiver<bool>>,
}

impl<S: Sys> Process<S> {
    fn is_alive(&self) -> bool {
        self.live.is_alive()
    }
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

    /// The shared mount's name for `spec` (see [`Identity::name`]).
    fn shared_name(&self, spec: &MountSpec) -> String {
        Identity::of(spec).name(&self.cfg.name_key)
    }

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

    fn log_path(&self, name: &str) -> PathBuf {
        layout::log_file(&self.cfg.state_dir, name)
    }

    /// Where s3fs stages open files: on the state folder's disk, never the host's `/tmp`.
    fn tmp_rel(name: &str) -> PathBuf {
        Path::new(layout::TMP).join(name)
    }

    /// The s3fs command line; no secret in it.
    fn s3fs_args(&self, spec: &MountSpec, name: &str, path: &Path) -> Vec<String> {
        let o = &spec.options;
        let b = &spec.backend;
        let mut opts = vec![
            format!("url={}", b.endpoint),
            format!("endpoint={}", b.region),
            "allow_other".to_string(),
            // No set-uid program or device node in a bucket means anything on the host.
            "nosuid".to_string(),
            "nodev".to_string(),
            format!("uid={}", o.uid),
            format!("gid={}", o.gid),
            format!("umask={:04o}", o.umask),
            format!("mp_umask={:04o}", o.umask),
            format!("parallel_count={}", o.tuning.parallel_count),
            format!("multipart_size={}", o.tuning.multipart_size),
            format!("stat_cache_expire={}", o.tuning.stat_cache_expire),
            "retries=2".to_string(),
            "connect_timeout=5".to_string(),
            "dbglevel=warn".to_string(),
            format!(
                "tmpdir={}",
                self.cfg.state_dir.join(Self::tmp_rel(name)).display()
            ),
            // s3fs refuses to grow staging files (and the cache) below this many MiB free,
            // so a huge write fails with ENOSPC or streams out instead of filling the disk.
            format!("ensure_diskfree={}", self.cfg.min_disk_free),
            // s3fs's own log file is written line by line; its stdout is block-buffered and
            // would say nothing before it exits.
            format!("logfile={}", self.log_path(name).display()),
        ];
        if o.ro {
            // The FUSE superblock itself is read-only: no remount of a bind makes it writable.
            opts.push("ro".to_string());
        }
        if b.path_style {
            opts.push("use_path_request_style".to_string());
        }
        if !o.tuning.compat_dir {
            opts.push("notsup_compat_dir".to_string());
        }
        // Never by default: s3fs renews a missing name's entry at each lookup, so a name that
        // is polled for would stay missing after another writer put it (see `Tuning`).
        if o.tuning.negative_cache {
            opts.push("enable_noobj_cache".to_string());
        }
        if o.tuning.cache {
            let dir = self.cfg.state_dir.join(layout::CACHE).join(name);
            opts.push(format!("use_cache={}", dir.display()));
            opts.push("del_cache".to_string());
        }
        vec![
            o.bucket.clone(),
            path.display().to_string(),
            "-f".to_string(),
            "-o".to_string(),
            opts.join(","),
        ]
    }

    /// Start s3fs for `spec` at `shared.path` and wait until the mount answers; `deadline`
    /// is the Mount's.
    async fn start(
        &self,
        spec: &MountSpec,
        name: &str,
        shared: &mut Shared<S>,
        deadline: Instant,
    ) -> Result<(), MountError> {
        let path = shared.path.clone();
        // Nothing may be left at the path by an s3fs of ours nobody owns (a daemon that died
        // while starting it): two s3fs on one path would break one-process-per-bucket.
        // It serves no volume (`start` runs only when none is bound here), so it is killed.
        // Only a process the kernel says is ours (see `sys::prove`) is: one that merely calls
        // itself so, or runs as another user, is left alone and does not stop the Mount.
        let sy = &*self.sys;
        let owner = sys::Owner::of(sy, &self.cfg.program);
        loop {
            let (ours, others) = sys::our_s3fs(sy, &owner, &path);
            if others > 0 {
                tracing::warn!(path = %path.display(), processes = others, "processes name this shared mount but are not bai-s3's s3fs (another user, another program); left alone");
            }
            let Some(fd) = ours.into_iter().next() else {
                break;
            };
            tracing::warn!(pid = fd.pid, path = %path.display(), "stopping an s3fs that no volume owns");
            let _ = fd.signal(sy, Signal::SIGKILL);
            while fd.is_alive(sy) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if Instant::now() >= deadline {
                return Err(MountError::InTheWay {
                    pid: fd.pid,
                    path: path.clone(),
                    after: self.cfg.mount_timeout,
                });
            }
        }
        if sys::mount_at(&sy.mounts(), &path).is_some() {
            let (p, sy) = (path.clone(), self.sys.clone());
            bounded::run(self.cfg.mount_timeout, move || sy.unmount(&p))
                .await
                .map_err(|e| MountError::host(format!("unmounting {}", path.display()), e))?
                .map_err(MountError::Table)?;
        }
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
        clear_folder(&path)
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

        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(self.s3fs_args(spec, name, &path))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("AWSACCESSKEYID", &spec.backend.access_key)
            .env("AWSSECRETACCESSKEY", spec.backend.secret_key.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Its own process group: a Ctrl-C or a signal to the daemon's group must not end
            // the mounts that containers use.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(ca) = &spec.backend.ca_file {
            cmd.env("CURL_CA_BUNDLE", ca);
        }
        let started = Instant::now();
        let mut spawned = self.sys.spawn(cmd).map_err(|e| {
            let _ = fs::remove_dir(&path);
            MountError::Spawn {
                program: self.cfg.program.clone(),
                error: e.to_string(),
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
        let mut process = Process {
            live,
            exited: Some(rx),
        };

        let deadline = started + self.cfg.mount_timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if !process.is_alive() {
                let said = log_tail(&log_path);
                let _ = self.sys.unmount(&path);
                let _ = fs::remove_dir(&path);
                return Err(MountError::Exited { said });
            }
            // s3fs checks the bucket inside FUSE's init, so the probe can block until that
            // check gives up: it must not hold the Mount past its deadline.
            let (p, sy) = (path.clone(), self.sys.clone());
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = matches!(
                bounded::run(left, move || sy.fuse_ready(&p)).await,
                Ok(true)
            );
            if ready {
                tracing::info!(
                    shared = name,
                    pid,
                    ms = started.elapsed().as_millis() as u64,
                    "s3fs mount ready"
                );
                shared.process = Some(process);
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Not mounted (or not answering): it serves nobody.
                self.stop_process(&path, &mut process, true).await;
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
    async fn stop_process(&self, path: &Path, process: &mut Process<S>, dead: bool) {
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
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            if !process.is_alive() {
                break;
            }
            if Instant::now() >= deadline {
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
                if let Some(rx) = process.exited.as_mut() {
                    let _ = tokio::time::timeout(EXIT_GRACE, rx.wait_for(|v| *v)).await;
                }
                break;
            }
            match process.exited.as_mut() {
                Some(rx) => {
                    let _ = tokio::time::timeout_at(deadline.into(), rx.wait_for(|v| *v)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let (p, sy) = (path.to_path_buf(), self.sys.clone());
        let _ = bounded::run(EXIT_GRACE, move || {
            let _ = sy.unmount(&p);
            let _ = fs::remove_dir(&p);
        })
        .await;
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
fn log_tail(path: &Path) -> String {
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

impl<S: Sys> Mounter for S3fsMounter<S> {
    async fn mount(&self, spec: &MountSpec) -> Result<String, MountError> {
        // One deadline for the whole Mount, whatever part of it is slow.
        let deadline = Instant::now() + self.cfg.mount_timeout;
        let name = self.shared_name(spec);
        let shared = self.entry(&name);
        let mut s = shared.lock().await;
        if let Some(p) = &s.process {
            let live = p.live.clone();
            let verdict = if live.is_alive() {
                live.ask(&s.path, self.cfg.mount_timeout).await
            } else {
                Ok(Err(nix::errno::Errno::ENOTCONN))
            };
            match verdict {
                Ok(Ok(())) => live.slow.store(false, Ordering::Release),
                // An error other than a gone connection is the store's, not a dead mount.
                Ok(Err(e)) if !sys::is_gone(e) => {}
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
        if s.process.is_none() {
            self.claim_slot(&name, &spec.options.bucket)?;
            let started = self.start(spec, &name, &mut s, deadline).await;
            self.sync_slot(&name, &s);
            started?;
        }
        let Some(live) = s.process.as_ref().map(|p| p.live.clone()) else {
            return Err(MountError::NotRunning);
        };

        // Joining compares the whole identity, not only the name.
        let identity = Identity::of(spec);
        let joined = match &s.identity {
            Some(running) if *running != identity => Err(MountError::OtherSettings {
                name: name.clone(),
                volume: spec.volume.clone(),
            }),
            _ => {
                s.identity = Some(identity);
                Ok(())
            }
        };
        let shared_path = s.path.clone();
        let mount_root = self.cfg.mount_root.clone();
        let volume = spec.volume.clone();
        let target = spec.target.clone();
        // Read-only binds are prepared in a private staging folder (see `sys::bind`).
        let stage_root = self.cfg.state_dir.join(layout::STAGE);
        let ro = spec.options.ro;
        let prefix = spec.options.prefix.clone();
        let bucket = spec.options.bucket.clone();
        // The work below may outlive the Mount's deadline (a lookup stuck on a slow store). The
        // phase makes sure none of it lands after the Mount answered: a late bind is never
        // made, or is undone. (A folder the resolver creates lands inside the bucket or, once
        // the s3fs is gone, nowhere: it works on fds of the FUSE mount.)
        let phase = Arc::new(std::sync::atomic::AtomicU8::new(RUNNING));
        let (ph, sy) = (phase.clone(), self.sys.clone());
        // On the FUSE pool: the prefix lookup and the bind reach into the s3fs's mount.
        let mut task = bounded::spawn(move || -> Result<(), MountError> {
            let late = || MountError::GivenUp;
            let cancelled = || ph.load(Ordering::Acquire) == CANCELLED;
            joined?;
            if cancelled() {
                return Err(late());
            }
            // The prefix is resolved inside the bucket's mount and bound from the fd that
            // walk returned; a read-only volume never creates it.
            let source = resolve::open_prefix(&shared_path, &bucket, prefix.as_deref(), ro)?;
            if cancelled() {
                return Err(late());
            }
            let target_fd = prepare_target(&*sy, &mount_root, &volume)?;
            let shown = (
                shared_path.join(prefix.as_deref().unwrap_or("")),
                target.clone(),
            );
            let stage = ro.then_some((stage_root.as_path(), volume.as_str()));
            sy.bind_view(sys::BindView {
                source: source.as_fd(),
                target: target_fd.as_fd(),
                shown: (&shown.0, &shown.1),
                read_only: stage,
                view: (&target, &shared_path, prefix.as_deref()),
            })
            .inspect_err(|_| {
                let _ = fs::remove_dir(&target);
            })?;
            if ph
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                let _ = sy.unmount(&target);
                let _ = fs::remove_dir(&target);
                return Err(late());
            }
            Ok(())
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
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(MountError::Task(bounded::Unanswered::Panicked.to_string())),
        };
        match result {
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

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let (t, sy) = (target.to_path_buf(), self.sys.clone());
        let r = bounded::run(self.cfg.mount_timeout, move || {
            let r = sy.unmount(&t);
            let _ = fs::remove_dir(&t);
            r
        })
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

    async fn adopt(&self, target: &Path, recorded: Option<&str>) -> Adoption {
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
        let keep: HashSet<&Path> = keep.iter().map(PathBuf::as_path).collect();
        let root = self.cfg.mount_root.clone();
        let shared_root = self.shared_root();
        // Every shared mount this run knows (adopted or mounting), locked or not.
        let in_use: HashSet<PathBuf> = {
            let map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            map.keys().map(|n| shared_root.join(n)).collect()
        };
        let sy = &*self.sys;
        let owner = sys::Owner::of(sy, &self.cfg.program);
        let table = sy.mounts();
        // Only what is provably ours is touched: s3fs mounts (and binds of them) in our own
        // folders. A held volume's target, and any s3fs it is a view of, is never touched.
        let kept_devs: HashSet<String> = table
            .iter()
            .filter(|m| keep.contains(m.mount_point.as_path()))
            .map(|m| m.dev.clone())
            .collect();
        let ours = |m: &sys::MountEntry| m.fs_type == S3FS_TYPE;
        let bounded_unmount = |p: PathBuf| async move {
            let shown = p.display().to_string();
            let sy = self.sys.clone();
            match bounded::run(EXIT_GRACE, move || {
                let r = sy.unmount(&p);
                let _ = fs::remove_dir(&p);
                r
            })
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "sweep"),
                Err(e) => tracing::warn!(path = %shown, error = %e, "sweep: unmount"),
            }
        };
        // Read-only staging binds of a run that died half-way through a Mount.
        let stage_root = self.cfg.state_dir.join(layout::STAGE);
        for m in table.iter().rev() {
            if m.mount_point.parent() == Some(stage_root.as_path()) && m.fs_type == S3FS_TYPE {
                bounded_unmount(m.mount_point.clone()).await;
            }
        }
        // Volume binds first, then the shared mounts they may hold.
        for m in table.iter().rev() {
            if m.mount_point.parent() == Some(root.as_path())
                && !keep.contains(m.mount_point.as_path())
                && m.mount_point != shared_root
            {
                if ours(m) {
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
        for m in sy.mounts().iter().rev() {
            if m.mount_point.parent() == Some(shared_root.as_path())
                && !in_use.contains(&m.mount_point)
                && ours(m)
                && !kept_devs.contains(&m.dev)
            {
                tracing::info!(path = %m.mount_point.display(), "stopping an s3fs left by an earlier run");
                let s3fs = sys::s3fs_of(sy, &owner, &m.mount_point);
                bounded_unmount(m.mount_point.clone()).await;
                // Its mount is gone: it exits by itself, unless it still serves files opened
                // before a lazy detach; then it is left to finish them.
                if let Some(fd) = s3fs {
                    let deadline = Instant::now() + EXIT_GRACE;
                    while fd.is_alive(sy) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if fd.is_alive(sy) {
                        tracing::warn!(
                            pid = fd.pid,
                            "s3fs still runs after its mount was detached; left to exit by itself"
                        );
                    }
                }
            }
        }
        // An s3fs started by a run that died before its mount was ready: it has no mount, so
        // it serves nobody, and its mount might still appear.
        let mounted: HashSet<PathBuf> = sy.mounts().into_iter().map(|m| m.mount_point).collect();
        let strays = sy.processes_with_arg(&|a| {
            (a.parent() == Some(shared_root.as_path())
                && !in_use.contains(a)
                && !mounted.contains(a))
            .then(|| a.to_path_buf())
        });
        for (pid, path) in strays {
            // Argv found it; only the kernel's word makes it ours (see `sys::prove`).
            let Some(fd) = sys::prove(sy, &owner, pid, &path) else {
                continue;
            };
            tracing::info!(pid = fd.pid, path = %path.display(), "stopping an s3fs that no volume owns");
            let _ = fd.signal(sy, Signal::SIGKILL);
            let deadline = Instant::now() + EXIT_GRACE;
            while fd.is_alive(sy) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            bounded_unmount(path).await;
        }
        // Empty folders left behind (never anything with content: no recursive removal).
        for dir in [&root, &shared_root] {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p != shared_root && !keep.contains(p.as_path()) && !in_use.contains(&p) {
                        let _ = fs::remove_dir(&p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "seam_tests.rs"]
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

    fn name(pairs: &[(&str, &str)]) -> String {
        Identity::of(&spec(pairs)).name(&[7; fsutil::KEY_LEN])
    }

    #[test]
    fn shared_names_split_on_settings_and_ro_but_not_on_prefix() {
        let a = name(&[("bucket", "abc")]);
        let b = name(&[("bucket", "abc"), ("prefix", "p/q")]);
        assert_eq!(a, b);
        for other in [
            name(&[("bucket", "abc"), ("uid", "1000")]),
            name(&[("bucket", "abc"), ("compat-dir", "false")]),
            name(&[("bucket", "abc"), ("cache", "true")]),
            name(&[("bucket", "abc"), ("negative-cache", "true")]),
            name(&[("bucket", "abc"), ("stat-cache-expire", "30")]),
            name(&[("bucket", "abd")]),
            name(&[("bucket", "abc"), ("ro", "true")]),
        ] {
            assert_ne!(a, other);
        }
        // Pinned format: `<backend>-<bucket>-<32 hex>`, HMAC-SHA256 with the host's key. A name
        // changes only with the settings of the s3fs behind it (this version's default runs
        // without s3fs's negative cache, so default volumes are named anew); a restarted daemon
        // finds live mounts by the shared mount each volume's record keeps, not by the name.
        assert_eq!(a, "default-abc-7bdc09f23a238274558f2a6bf7709669");
        let tuned = name(&[("bucket", "abc"), ("uid", "1000"), ("cache", "true")]);
        assert_eq!(tuned, "default-abc-49e0de2365a8fda39be3045988f9ee38");
        // A read-only volume has an s3fs of its own, whatever its prefix, named so.
        let ro = name(&[("bucket", "abc"), ("ro", "true")]);
        assert_eq!(
            ro,
            name(&[("bucket", "abc"), ("ro", "true"), ("prefix", "p")])
        );
        assert_eq!(ro, "default-abc-ro-a6b58e100e8f6a80b9216e282ad27396");
        // Another host key, another name; the secret key never shows.
        let other_host = Identity::of(&spec(&[("bucket", "abc")])).name(&[8; fsutil::KEY_LEN]);
        assert_ne!(a, other_host);
        assert!(!a.contains("TOPSECRET"));
    }

    #[test]
    fn names_cannot_meet_across_field_boundaries() {
        // The old name joined fields with '-' and '|': backend `a-b` with bucket `c` and
        // backend `a` with bucket `b-c` met. Length-prefixed fields keep them apart.
        let mut x = spec(&[("bucket", "ccc"), ("backend", "a-b")]);
        let mut y = spec(&[("bucket", "b-ccc"), ("backend", "a")]);
        assert_eq!(
            format!("{}-{}", x.options.backend, x.options.bucket),
            format!("{}-{}", y.options.backend, y.options.bucket)
        );
        let key = [1; fsutil::KEY_LEN];
        assert_ne!(Identity::of(&x).name(&key), Identity::of(&y).name(&key));
        // Every backend setting counts, the secret key too (a rotated key gets a new s3fs).
        let base = Identity::of(&x).name(&key);
        x.backend.region = "eu-west-1".into();
        assert_ne!(Identity::of(&x).name(&key), base);
        y = spec(&[("bucket", "ccc"), ("backend", "a-b")]);
        y.backend.secret_key = toml::from_str::<Backend>(
            "endpoint = \"http://127.0.0.1:1\"\naccess-key = \"AK\"\nsecret-key = \"OTHER\"\n",
        )
        .unwrap()
        .secret_key;
        assert_ne!(Identity::of(&y).name(&key), base);
        assert_ne!(
            Identity::of(&y),
            Identity::of(&spec(&[("bucket", "ccc"), ("backend", "a-b")]))
        );
    }

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

    /// A real mounter over `/m` and `/s` (nothing is mounted: for its command lines).
    fn mounter() -> S3fsMounter {
        S3fsMounter::new(S3fsConfig {
            mount_root: "/m".into(),
            state_dir: "/s".into(),
            mount_timeout: Duration::from_secs(1),
            program: "s3fs".into(),
            min_disk_free: 512,
            max_mounts: 0,
            name_key: [7; fsutil::KEY_LEN],
        })
    }

    #[test]
    fn the_command_line_holds_no_secret() {
        let m = mounter();
        let s = spec(&[("bucket", "abc"), ("uid", "1000"), ("cache", "true")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(!args.contains("TOPSECRET"), "{args}");
        assert!(args.contains("uid=1000") && args.contains("allow_other") && args.contains(" -f "));
        assert!(args.contains("use_cache=/s/cache/n"));
        assert!(args.contains("tmpdir=/s/tmp/n,") && args.contains("ensure_diskfree=512"));
        assert!(!args.contains("notsup_compat_dir"));
        // Fresh by default: metadata cached 1 s, missing names not remembered.
        assert!(args.contains(",stat_cache_expire=1,"), "{args}");
        assert!(!args.contains("enable_noobj_cache"), "{args}");
        let s = spec(&[("bucket", "abc"), ("compat-dir", "false")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(args.contains(",notsup_compat_dir"), "{args}");
        let s = spec(&[("bucket", "abc"), ("negative-cache", "true")]);
        let args = m.s3fs_args(&s, "n", Path::new("/m/.s3fs/n")).join(" ");
        assert!(args.contains(",enable_noobj_cache"), "{args}");
    }

    /// The FUSE mount options (`-o a,b,c`) of the s3fs started for `pairs`.
    fn fuse_options(pairs: &[(&str, &str)]) -> Vec<String> {
        let m = mounter();
        let args = m.s3fs_args(&spec(pairs), "n", Path::new("/m/.s3fs/n"));
        let at = args.iter().position(|a| a == "-o").unwrap();
        args[at + 1].split(',').map(str::to_string).collect()
    }

    #[test]
    fn every_s3fs_is_nosuid_nodev_and_a_read_only_one_is_mounted_ro() {
        let rw = fuse_options(&[("bucket", "abc")]);
        let ro = fuse_options(&[("bucket", "abc"), ("ro", "true")]);
        for o in [&rw, &ro] {
            assert!(o.iter().any(|x| x == "nosuid"), "{o:?}");
            assert!(o.iter().any(|x| x == "nodev"), "{o:?}");
        }
        assert!(!rw.iter().any(|x| x == "ro" || x == "rw"), "{rw:?}");
        assert!(ro.iter().any(|x| x == "ro"), "{ro:?}");
    }
}
