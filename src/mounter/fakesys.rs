//! A system without root for the s3fs mounter's tests: [`RecordingSys`] keeps a mount table
//! and a process table in memory and records every call, and [`FaultySys`] wraps any
//! [`Sys`] to make a chosen call hang, fail, or kill s3fs at that point (in the style of
//! mountpoint-s3's failure client). Folders stay real (temporary directories): only mounts and
//! processes are pretended.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::watch;

use super::sys::{mount_at, BindView, FileId, MountEntry, ProcInfo, Spawned, Sys, TableError};
use super::MountError;

/// The longest a pretended hang lasts when a test forgets to end it: the tokio runtime of a
/// test waits for its blocking threads when it shuts down.
const HANG_CAP: Duration = Duration::from_secs(60);

/// One call the mounter made, with what it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mounts,
    Unmount(PathBuf),
    /// `(source shown, target shown, read-only)`.
    Bind(PathBuf, PathBuf, bool),
    Statvfs(PathBuf),
    FuseReady(PathBuf),
    Spawn(Vec<OsString>),
    /// A search of the process table by argument.
    Processes,
    PidAlive(u32),
    Kill(u32, Signal),
    PidfdOpen(u32),
    PidfdAlive(u32),
    PidfdSignal(u32, Signal),
    ProcessInfo(u32),
    ResidentBytes(u32),
}

/// What state a pretended process is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// SIGSTOP'd: calls into its mounts block until it runs again or dies.
    Stopped,
    Dead,
}

struct Proc {
    /// The program's file (as [`RecordingSys::program_file`] names programs).
    exe: String,
    /// Real and effective uid.
    uid: u32,
    /// Stuck in the kernel: SIGKILL does not end it.
    unkillable: bool,
    args: Vec<OsString>,
    state: State,
    exited: watch::Sender<bool>,
    /// What `VmRSS` would say, in bytes (see [`RecordingSys::set_resident`]).
    resident: u64,
}

#[derive(Default)]
struct Tables {
    mounts: Vec<MountEntry>,
    procs: BTreeMap<u32, Proc>,
    /// The process serving each device (its s3fs).
    servers: BTreeMap<String, u32>,
    /// Devices whose FUSE connection was aborted (answers ENOTCONN, its s3fs alive or not).
    aborted: std::collections::BTreeSet<String>,
    next_pid: u32,
    next_dev: u32,
    calls: Vec<Call>,
    /// When false, a spawned s3fs never makes its mount (it hangs in its bucket check).
    no_mount_on_spawn: bool,
    /// pidfd_open fails with EPERM (a seccomp profile that refuses it).
    no_pidfds: bool,
}

/// An in-memory mount and process table that records every call. A spawned s3fs mounts the
/// path it was given at once; a test can kill or stop it, or add mounts and processes that
/// an earlier run left.
#[derive(Default)]
pub struct RecordingSys {
    t: Mutex<Tables>,
    /// Woken on every change of a process's state (for calls blocked on a stopped one).
    changed: Condvar,
}

impl RecordingSys {
    /// An empty system (PIDs start above 1000, like a booted host's).
    pub fn new() -> Self {
        let sys = RecordingSys::default();
        sys.lock().next_pid = 1000;
        sys
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.t.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, c: Call) -> MutexGuard<'_, Tables> {
        let mut t = self.lock();
        t.calls.push(c);
        t
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// True when some call so far matches.
    pub fn called(&self, f: impl Fn(&Call) -> bool) -> bool {
        self.lock().calls.iter().any(f)
    }

    /// True when `pid` got any signal, by pidfd or by PID.
    pub fn signalled(&self, pid: u32) -> bool {
        self.called(|c| matches!(c, Call::Kill(p, _) | Call::PidfdSignal(p, _) if *p == pid))
    }

    /// Whether spawned s3fs processes make their mount (default) or never get ready.
    pub fn set_mount_on_spawn(&self, yes: bool) {
        self.lock().no_mount_on_spawn = !yes;
    }

    /// Refuse pidfds from now on, as an old container seccomp profile does.
    pub fn refuse_pidfds(&self) {
        self.lock().no_pidfds = true;
    }

    /// A process `program args...` of root running that program, as an earlier run might
    /// have left it; its PID.
    pub fn add_process(&self, program: &str, args: &[&str]) -> u32 {
        self.add_process_as(0, program, args)
    }

    /// A process of `uid` running the file `exe` (a program name, as the mounter's
    /// configuration gives it) with `args` after its `argv[0]` (which argv-rewriting makes
    /// anything, so the fake does not keep it); its PID.
    pub fn add_process_as(&self, uid: u32, exe: &str, args: &[&str]) -> u32 {
        let mut t = self.lock();
        let pid = Self::new_proc(&mut t, exe, args.iter().map(OsString::from).collect());
        if let Some(p) = t.procs.get_mut(&pid) {
            p.uid = uid;
        }
        pid
    }

    /// Give `pid` a resident memory of `bytes` (for [`Sys::resident_bytes`]).
    pub fn set_resident(&self, pid: u32, bytes: u64) {
        if let Some(p) = self.lock().procs.get_mut(&pid) {
            p.resident = bytes;
        }
    }

    /// Make `pid` ignore every signal, as a process stuck in the kernel does SIGKILL.
    pub fn set_unkillable(&self, pid: u32) {
        if let Some(p) = self.lock().procs.get_mut(&pid) {
            p.unkillable = true;
        }
    }

    /// The file id the fake gives the program file `exe`: one per name.
    fn file_of(exe: &str) -> FileId {
        let ino = exe.bytes().fold(1_469_598_103_934_665_603u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211)
        });
        FileId { dev: 8, ino }
    }

    fn new_proc(t: &mut Tables, program: &str, args: Vec<OsString>) -> u32 {
        t.next_pid += 1;
        let pid = t.next_pid;
        let (exited, _) = watch::channel(false);
        t.procs.insert(
            pid,
            Proc {
                exe: program.to_string(),
                uid: 0,
                unkillable: false,
                args,
                state: State::Running,
                exited,
                resident: 0,
            },
        );
        pid
    }

    /// Mount a new file system of `fs_type` at `path`, served by `server` when given; its
    /// device.
    pub fn add_mount(&self, path: &Path, fs_type: &str, server: Option<u32>) -> String {
        let mut t = self.lock();
        Self::new_mount(&mut t, path, fs_type, server)
    }

    fn new_mount(t: &mut Tables, path: &Path, fs_type: &str, server: Option<u32>) -> String {
        t.next_dev += 1;
        let dev = format!("0:{}", 100 + t.next_dev);
        t.mounts.push(MountEntry {
            dev: dev.clone(),
            root: PathBuf::from("/"),
            mount_point: path.to_path_buf(),
            fs_type: fs_type.to_string(),
        });
        if let Some(pid) = server {
            t.servers.insert(dev.clone(), pid);
        }
        dev
    }

    /// Bind the folder `root` of the file system mounted at `source` onto `target`.
    pub fn add_bind(&self, source: &Path, root: &str, target: &Path) -> Result<(), TableError> {
        let mut t = self.lock();
        Self::new_bind(&mut t, source, root, target)
    }

    fn new_bind(
        t: &mut Tables,
        source: &Path,
        root: &str,
        target: &Path,
    ) -> Result<(), TableError> {
        let Some(src) = mount_at(&t.mounts, source) else {
            return Err(TableError::Bind {
                from: source.to_path_buf(),
                onto: target.to_path_buf(),
                errno: Errno::EINVAL,
            });
        };
        t.mounts.push(MountEntry {
            dev: src.dev,
            root: src.root.join(root.trim_start_matches('/')),
            mount_point: target.to_path_buf(),
            fs_type: src.fs_type,
        });
        Ok(())
    }

    /// The first live process whose arguments include `arg`.
    pub fn pid_with_arg(&self, arg: &Path) -> Option<u32> {
        let t = self.lock();
        t.procs
            .iter()
            .find(|(_, p)| p.state != State::Dead && p.args.iter().any(|a| a == arg.as_os_str()))
            .map(|(pid, _)| *pid)
    }

    /// The state of `pid`; None when no such process was ever made.
    pub fn state(&self, pid: u32) -> Option<State> {
        self.lock().procs.get(&pid).map(|p| p.state)
    }

    /// The live processes.
    pub fn live_pids(&self) -> Vec<u32> {
        let t = self.lock();
        t.procs
            .iter()
            .filter(|(_, p)| p.state != State::Dead)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Is anything mounted at `path`?
    pub fn is_mounted(&self, path: &Path) -> bool {
        self.lock().mounts.iter().any(|m| m.mount_point == path)
    }

    /// Abort the FUSE connection of the file system mounted at `path`, as
    /// `/sys/fs/fuse/connections/N/abort` does: its calls fail with ENOTCONN from now on.
    pub fn abort_connection(&self, path: &Path) {
        let mut t = self.lock();
        if let Some(m) = mount_at(&t.mounts, path) {
            t.aborted.insert(m.dev);
        }
        self.changed.notify_all();
    }

    /// Let every stopped process run again (ends every pretended FUSE hang).
    pub fn resume_all(&self) {
        let mut t = self.lock();
        for p in t.procs.values_mut() {
            if p.state == State::Stopped {
                p.state = State::Running;
            }
        }
        self.changed.notify_all();
    }

    /// Change a process's state as a signal from outside would (kill, stop, continue).
    pub fn set_state(&self, pid: u32, state: State) {
        let mut t = self.lock();
        Self::set(&mut t, pid, state);
        self.changed.notify_all();
    }

    fn set(t: &mut Tables, pid: u32, state: State) {
        if let Some(p) = t.procs.get_mut(&pid) {
            if p.state != State::Dead {
                p.state = state;
                if state == State::Dead {
                    let _ = p.exited.send(true);
                }
            }
        }
    }

    /// The state of the s3fs serving the mount at `path` as a FUSE call sees it (Dead when the
    /// connection is aborted), waiting while it is stopped. None: nothing mounted there.
    fn server_of(&self, mut t: MutexGuard<'_, Tables>, path: &Path) -> Option<State> {
        let deadline = std::time::Instant::now() + HANG_CAP;
        loop {
            let m = mount_at(&t.mounts, path)?;
            if t.aborted.contains(&m.dev) {
                return Some(State::Dead);
            }
            let state = match t.servers.get(&m.dev) {
                Some(pid) => t.procs.get(pid).map_or(State::Dead, |p| p.state),
                None => State::Running,
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if state != State::Stopped || left.is_zero() {
                return Some(state);
            }
            t = self
                .changed
                .wait_timeout(t, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn signal(&self, t: &mut Tables, pid: u32, sig: Signal) -> Result<(), Errno> {
        match t.procs.get(&pid).map(|p| p.state) {
            None | Some(State::Dead) => return Err(Errno::ESRCH),
            Some(_) => {}
        }
        if t.procs.get(&pid).is_some_and(|p| p.unkillable) {
            return Ok(());
        }
        let state = match sig {
            Signal::SIGSTOP => State::Stopped,
            Signal::SIGCONT => State::Running,
            _ => State::Dead,
        };
        Self::set(t, pid, state);
        self.changed.notify_all();
        Ok(())
    }
}

impl Sys for RecordingSys {
    type Pidfd = u32;

    fn mounts(&self) -> Vec<MountEntry> {
        let t = self.record(Call::Mounts);
        t.mounts.clone()
    }

    fn unmount(&self, path: &Path) -> Result<(), TableError> {
        let mut t = self.record(Call::Unmount(path.to_path_buf()));
        let Some(i) = t.mounts.iter().rposition(|m| m.mount_point == path) else {
            return Ok(());
        };
        let dev = t.mounts.remove(i).dev;
        // The last mount of a FUSE file system gone: its s3fs exits, as the real one does.
        if !t.mounts.iter().any(|m| m.dev == dev) {
            if let Some(pid) = t.servers.remove(&dev) {
                Self::set(&mut t, pid, State::Dead);
                self.changed.notify_all();
            }
        }
        Ok(())
    }

    fn bind_view(&self, b: BindView<'_>) -> Result<(), MountError> {
        let mut t = self.record(Call::Bind(
            b.shown.0.to_path_buf(),
            b.shown.1.to_path_buf(),
            b.read_only.is_some(),
        ));
        let (target, shared, prefix) = b.view;
        Self::new_bind(&mut t, shared, prefix.unwrap_or(""), target).map_err(MountError::Table)
    }

    fn statvfs(&self, path: &Path) -> Result<(), Errno> {
        let t = self.record(Call::Statvfs(path.to_path_buf()));
        match self.server_of(t, path) {
            Some(State::Dead) => Err(Errno::ENOTCONN),
            _ => Ok(()),
        }
    }

    fn fuse_ready(&self, path: &Path) -> bool {
        let t = self.record(Call::FuseReady(path.to_path_buf()));
        let fuse = mount_at(&t.mounts, path).is_some_and(|m| m.fs_type.starts_with("fuse"));
        fuse && self.server_of(t, path) == Some(State::Running)
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Spawned<u32>> {
        let std = cmd.as_std();
        let args: Vec<OsString> = std.get_args().map(OsString::from).collect();
        let program = Path::new(std.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut t = self.record(Call::Spawn(args.clone()));
        let pid = Self::new_proc(&mut t, &program, args.clone());
        // s3fs's command line is `bucket mountpoint ...`.
        if !t.no_mount_on_spawn {
            if let Some(path) = args.get(1) {
                Self::new_mount(&mut t, Path::new(path), "fuse.s3fs", Some(pid));
            }
        }
        let mut rx = t.procs[&pid].exited.subscribe();
        Ok(Spawned {
            pid,
            pidfd: (!t.no_pidfds).then_some(pid),
            exited: Box::pin(async move {
                let _ = rx.wait_for(|dead| *dead).await;
                Ok(ExitStatus::from_raw(Signal::SIGKILL as i32))
            }),
        })
    }

    fn processes_with_arg<T>(&self, pick: &dyn Fn(&Path) -> Option<T>) -> Vec<(u32, T)> {
        let t = self.record(Call::Processes);
        t.procs
            .iter()
            .filter(|(_, p)| p.state != State::Dead)
            .filter_map(|(pid, p)| {
                let found = p.args.iter().find_map(|a| pick(Path::new(a)))?;
                Some((*pid, found))
            })
            .collect()
    }

    fn process_info(&self, pid: u32) -> Option<ProcInfo> {
        let t = self.record(Call::ProcessInfo(pid));
        let p = t.procs.get(&pid).filter(|p| p.state != State::Dead)?;
        Some(ProcInfo {
            uid: (p.uid, p.uid),
            exe: Some(Self::file_of(&p.exe)),
            exe_path: PathBuf::from("/usr/bin").join(&p.exe),
            args: p.args.clone(),
        })
    }

    fn resident_bytes(&self, pid: u32) -> Option<u64> {
        let t = self.record(Call::ResidentBytes(pid));
        let p = t.procs.get(&pid).filter(|p| p.state != State::Dead)?;
        Some(p.resident)
    }

    fn program_file(&self, program: &str) -> Option<(FileId, PathBuf)> {
        Some((
            Self::file_of(program),
            PathBuf::from("/usr/bin").join(program),
        ))
    }

    fn uid(&self) -> u32 {
        0
    }

    fn pid_alive(&self, pid: u32) -> bool {
        let t = self.record(Call::PidAlive(pid));
        t.procs.get(&pid).is_some_and(|p| p.state != State::Dead)
    }

    fn kill(&self, pid: u32, sig: Signal) -> Result<(), Errno> {
        let mut t = self.record(Call::Kill(pid, sig));
        self.signal(&mut t, pid, sig)
    }

    fn pidfd_open(&self, pid: u32) -> std::io::Result<u32> {
        let t = self.record(Call::PidfdOpen(pid));
        if t.no_pidfds {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EPERM));
        }
        if t.procs.get(&pid).is_some_and(|p| p.state != State::Dead) {
            Ok(pid)
        } else {
            Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH))
        }
    }

    fn pidfd_alive(&self, fd: &u32) -> bool {
        let t = self.record(Call::PidfdAlive(*fd));
        t.procs.get(fd).is_some_and(|p| p.state != State::Dead)
    }

    fn pidfd_signal(&self, fd: &u32, sig: Signal) -> Result<(), Errno> {
        let mut t = self.record(Call::PidfdSignal(*fd, sig));
        self.signal(&mut t, *fd, sig)
    }
}

/// Which call a fault is armed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Unmount,
    Bind,
    Statvfs,
    FuseReady,
    Spawn,
}

/// What happens at the armed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Block until [`FaultySys::release`], then make the call.
    Hang,
    /// Return an error without making the call.
    Fail,
    /// Every s3fs dies (SIGKILL) just before the call is made.
    Die,
}

struct Armed {
    kind: Kind,
    /// The call of that kind it fires at, counted from 1.
    nth: usize,
    fault: Fault,
}

#[derive(Default)]
struct Faults {
    armed: Vec<Armed>,
    /// How many calls of each kind were made.
    seen: BTreeMap<Kind, usize>,
    released: bool,
}

/// Any [`Sys`], with faults armed at chosen calls.
pub struct FaultySys<S> {
    pub inner: S,
    faults: Mutex<Faults>,
    gate: Condvar,
}

impl<S: Sys> FaultySys<S> {
    /// `inner` with no fault armed.
    pub fn new(inner: S) -> Self {
        FaultySys {
            inner,
            faults: Mutex::new(Faults::default()),
            gate: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make the `nth` call (from 1) of `kind` from now on do `fault`.
    pub fn arm(&self, kind: Kind, nth: usize, fault: Fault) {
        let mut f = self.lock();
        let nth = nth + f.seen.get(&kind).copied().unwrap_or(0);
        f.armed.push(Armed { kind, nth, fault });
    }

    /// End every hang, now and later.
    pub fn release(&self) {
        self.lock().released = true;
        self.gate.notify_all();
    }

    /// Count the call and apply its fault; false when the call must fail.
    fn at(&self, kind: Kind) -> bool {
        let mut f = self.lock();
        let n = {
            let n = f.seen.entry(kind).or_insert(0);
            *n += 1;
            *n
        };
        let fault = f
            .armed
            .iter()
            .find(|a| a.kind == kind && a.nth == n)
            .map(|a| a.fault);
        match fault {
            None => true,
            Some(Fault::Fail) => false,
            Some(Fault::Hang) => {
                while !f.released {
                    let (g, timeout) = self
                        .gate
                        .wait_timeout(f, HANG_CAP)
                        .unwrap_or_else(|e| e.into_inner());
                    f = g;
                    if timeout.timed_out() {
                        break;
                    }
                }
                true
            }
            Some(Fault::Die) => {
                drop(f);
                let s3fs = self.inner.program_file("s3fs").map(|(id, _)| id);
                for (pid, ()) in self.inner.processes_with_arg(&|_| Some(())) {
                    if self.inner.process_info(pid).and_then(|i| i.exe) == s3fs {
                        let _ = self.inner.kill(pid, Signal::SIGKILL);
                    }
                }
                true
            }
        }
    }
}

impl<S: Sys> Sys for FaultySys<S> {
    type Pidfd = S::Pidfd;

    fn mounts(&self) -> Vec<MountEntry> {
        self.inner.mounts()
    }

    fn unmount(&self, path: &Path) -> Result<(), TableError> {
        if !self.at(Kind::Unmount) {
            return Err(TableError::Unmount {
                path: path.to_path_buf(),
                errno: Errno::EBUSY,
            });
        }
        self.inner.unmount(path)
    }

    fn bind_view(&self, b: BindView<'_>) -> Result<(), MountError> {
        if !self.at(Kind::Bind) {
            return Err(MountError::Table(TableError::Bind {
                from: b.shown.0.to_path_buf(),
                onto: b.shown.1.to_path_buf(),
                errno: Errno::EPERM,
            }));
        }
        self.inner.bind_view(b)
    }

    fn statvfs(&self, path: &Path) -> Result<(), Errno> {
        if !self.at(Kind::Statvfs) {
            return Err(Errno::EIO);
        }
        self.inner.statvfs(path)
    }

    fn fuse_ready(&self, path: &Path) -> bool {
        self.at(Kind::FuseReady) && self.inner.fuse_ready(path)
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Spawned<S::Pidfd>> {
        if !self.at(Kind::Spawn) {
            return Err(std::io::Error::other("spawn failed: injected"));
        }
        self.inner.spawn(cmd)
    }

    fn processes_with_arg<T>(&self, pick: &dyn Fn(&Path) -> Option<T>) -> Vec<(u32, T)> {
        self.inner.processes_with_arg(pick)
    }

    fn process_info(&self, pid: u32) -> Option<ProcInfo> {
        self.inner.process_info(pid)
    }

    fn resident_bytes(&self, pid: u32) -> Option<u64> {
        self.inner.resident_bytes(pid)
    }

    fn program_file(&self, program: &str) -> Option<(FileId, PathBuf)> {
        self.inner.program_file(program)
    }

    fn uid(&self) -> u32 {
        self.inner.uid()
    }

    fn pid_alive(&self, pid: u32) -> bool {
        self.inner.pid_alive(pid)
    }

    fn kill(&self, pid: u32, sig: Signal) -> Result<(), Errno> {
        self.inner.kill(pid, sig)
    }

    fn pidfd_open(&self, pid: u32) -> std::io::Result<S::Pidfd> {
        self.inner.pidfd_open(pid)
    }

    fn pidfd_alive(&self, fd: &S::Pidfd) -> bool {
        self.inner.pidfd_alive(fd)
    }

    fn pidfd_signal(&self, fd: &S::Pidfd, sig: Signal) -> Result<(), Errno> {
        self.inner.pidfd_signal(fd, sig)
    }
}
