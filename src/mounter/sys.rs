//! Small system-level helpers of the mount layer: the mount table, bind mounts, liveness
//! probes and process lookups. Each error names the operation and the path.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use std::os::fd::{AsFd, BorrowedFd};

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::{resolve, MountError};
use crate::fsutil::{fd_path, open_beneath, open_dir, BeneathError, DirError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the file system: bind mounts of one FUSE mount share it.
    pub dev: String,
    /// The path inside the file system that is mounted here (`/` or a bound sub-folder).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Undo the octal escapes (`\040` for a space) of mountinfo's path fields.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                if let Ok(v) = u8::from_str_radix(std::str::from_utf8(oct).unwrap_or("x"), 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Parse mountinfo text (kept separate from reading it, for tests).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fs_type = right.split(' ').next()?.to_string();
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
                fs_type,
            })
        })
        .collect()
}

/// The entry mounted last at `path`, if any (later mounts hide earlier ones).
pub fn mount_at(table: &[MountEntry], path: &Path) -> Option<MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path).cloned()
}

/// A change to the mount table that could not be made, with the paths a person knows (not the
/// `/proc/self/fd` names the change was made through).
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("bind mount of {} on {} failed: {}", .from.display(), .onto.display(), .errno.desc())]
    Bind {
        from: PathBuf,
        onto: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("read-only remount of {} failed: {}", .at.display(), .errno.desc())]
    ReadOnly {
        at: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("remount of {} with nosuid,nodev failed: {}", .at.display(), .errno.desc())]
    NoSuid {
        at: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("making {} a private mount failed: {}", .dir.display(), .errno.desc())]
    Private {
        dir: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("unmount of {} failed: {}", .path.display(), .errno.desc())]
    Unmount {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    /// A folder of the daemon's own (the staging folder of read-only binds) could not be used.
    #[error("{error}")]
    Folder {
        #[source]
        error: DirError,
    },
    /// The staging folder of a read-only bind could not be made in `stage_root`.
    #[error("cannot make staging folder in {}: {error}", .stage_root.display())]
    Staging {
        stage_root: PathBuf,
        #[source]
        error: BeneathError,
    },
}

/// The per-mount flags every mount the daemon makes carries: nothing in a bucket (or in the
/// daemon's staging folder) is a set-uid program or a device node to the host. A new bind
/// takes its source mount's flags, and every shared s3fs is mounted with them; a bind
/// remount sets all per-mount flags at once, so each remount names them again.
pub const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Remount the bind mount at `at` with `add` and [`NOSUID_NODEV`], keeping the per-mount
/// flags it has (noexec, read-only, and its atime mode, which the kernel keeps when none is
/// named): a flag left out of a bind remount is cleared.
fn remount_bind(at: &Path, add: MsFlags) -> Result<(), Errno> {
    let has = nix::sys::statvfs::statvfs(at)?.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | NOSUID_NODEV | add;
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if has.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>)
}

fn bind_once(source: &Path, target: &Path, shown: (&Path, &Path)) -> Result<(), TableError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| TableError::Bind {
        from: shown.0.to_path_buf(),
        onto: shown.1.to_path_buf(),
        errno,
    })
}

/// Bind the folder `source` onto the folder `target`, both given as fds (see
/// [`crate::fsutil::open_beneath`]) so that no name is looked up again between checking and
/// mounting; `shown` are their paths for messages. Read-only when `read_only` names a staging
/// folder `(stage_root, volume)`.
///
/// A read-only bind needs a remount after the bind, and a remount changes only the one mount
/// it names: when `target` lies in a shared mount (the managed plugin's propagatedMount, or a
/// host whose `/` is shared), the copies already propagated to the host stay writable, and
/// Docker hands those to containers. So a read-only bind is made in a staging folder inside a
/// private mount, remounted read-only there, and only then bound onto `target`: every copy of
/// that bind, propagated or not, starts read-only. The remount names nosuid and nodev again
/// (see [`NOSUID_NODEV`]); a writable bind is never remounted and keeps its source's flags.
///
/// A runtime that binds the volume again and remounts that bind to add flags of its own
/// clears the read-only flag of its copy: what holds then is the read-only s3fs behind a
/// read-only volume (see `s3fs::Identity`), not this bind.
fn bind(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    shown: (&Path, &Path),
    read_only: Option<(&Path, &str)>,
) -> Result<(), TableError> {
    let (src, dst) = (fd_path(source), fd_path(target));
    let Some((stage_root, volume)) = read_only else {
        return bind_once(&src, &dst, shown);
    };
    make_private_mount(stage_root)?;
    let root_fd = open_dir(stage_root).map_err(|e| TableError::Folder { error: e })?;
    // A staging bind a crashed run left would hide the folder itself.
    let stage = stage_root.join(volume);
    let _ = unmount(&stage);
    let stage_fd =
        open_beneath(root_fd.as_fd(), Path::new(volume), Some(0o700), true).map_err(|error| {
            TableError::Staging {
                stage_root: stage_root.to_path_buf(),
                error,
            }
        })?;
    bind_once(&src, &fd_path(stage_fd.as_fd()), (shown.0, &stage))?;
    let result = remount_bind(&stage, MsFlags::MS_RDONLY)
        .map_err(|errno| TableError::ReadOnly {
            at: stage.clone(),
            errno,
        })
        .and_then(|()| bind_once(&stage, &dst, (&stage, shown.1)));
    let _ = umount2(&stage, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&stage);
    result
}

/// Make `dir` (a folder the daemon checked at start, see [`crate::fsutil::sub_dir`]) a mount
/// of its own with private propagation, so mounts made inside it are seen nowhere else, and
/// with nosuid and nodev, as every mount the daemon makes.
fn make_private_mount(dir: &Path) -> Result<(), TableError> {
    let fd = open_dir(dir).map_err(|e| TableError::Folder { error: e })?;
    if mount_at(&read_mounts(), dir).is_none() {
        let p = fd_path(fd.as_fd());
        bind_once(&p, &p, (dir, dir))?;
    }
    // Also when an earlier version made it without them.
    remount_bind(dir, MsFlags::empty()).map_err(|errno| TableError::NoSuid {
        at: dir.to_path_buf(),
        errno,
    })?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|errno| TableError::Private {
        dir: dir.to_path_buf(),
        errno,
    })
}

/// The current mount table of this process's namespace.
fn read_mounts() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Unmount `path`; a busy or dead mount is detached lazily (it goes away when its last user
/// does). Not being mounted is success.
fn unmount(path: &Path) -> Result<(), TableError> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(_) => match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(TableError::Unmount {
                path: path.to_path_buf(),
                errno,
            }),
        },
    }
}

/// Live (not zombie) processes with an argument (after `argv[0]`) for which `pick` returns
/// something, and that something; only those whose `argv[0]` is named `program` when given.
/// Argv is the process's own to rewrite: what this finds are candidates, never proof (see
/// [`our_s3fs`]).
fn scan_args<T>(program: Option<&str>, pick: &dyn Fn(&Path) -> Option<T>) -> Vec<(u32, T)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmd
                .split(|b| *b == 0)
                .map(|a| Path::new(OsStr::from_bytes(a)));
            let argv0 = args.next()?;
            if program.is_some_and(|p| argv0.file_name() != Some(OsStr::new(p))) {
                return None;
            }
            let found = args.find_map(pick)?;
            is_alive(pid).then_some((pid, found))
        })
        .collect()
}

/// A file as the kernel knows it: device and inode, which no process can fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What the kernel says about a process: who runs it and what it runs. Read from /proc, so
/// only meaningful for a process held by a pidfd that is still alive after the reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Real and effective uid (`/proc/PID/status`).
    pub uid: (u32, u32),
    /// The executable (`/proc/PID/exe`, followed): None when it cannot be read.
    pub exe: Option<FileId>,
    /// Where the executable was when it was started (`/proc/PID/exe` read as a link); ends in
    /// ` (deleted)` once that file was replaced (an upgraded s3fs package).
    pub exe_path: PathBuf,
    /// The arguments after `argv[0]`.
    pub args: Vec<std::ffi::OsString>,
}

/// The executable that `program` names: a path, or a name looked up in `PATH` as the spawn
/// does; its identity and its canonical path.
fn program_file(program: &str) -> Option<(FileId, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let found = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())?
    };
    let m = fs::metadata(&found).ok()?;
    let canonical = fs::canonicalize(&found).ok()?;
    Some((
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        },
        canonical,
    ))
}

/// Read what the kernel says about `pid` (see [`ProcInfo`]); None when it is gone.
fn proc_info(pid: u32) -> Option<ProcInfo> {
    use std::os::unix::fs::MetadataExt;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid_line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = uid_line.split_whitespace().map(str::parse::<u32>);
    let (Some(Ok(real)), Some(Ok(effective))) = (ids.next(), ids.next()) else {
        return None;
    };
    let exe = fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        });
    let exe_path = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = cmd
        .split(|b| *b == 0)
        .skip(1)
        .map(|a| OsStr::from_bytes(a).to_os_string())
        .collect();
    Some(ProcInfo {
        uid: (real, effective),
        exe,
        exe_path,
        args,
    })
}

/// True while `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name in parentheses, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .map(|s| s != 'Z' && s != 'X')
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A process held by a pidfd, so that signals reach that very process and never one that
/// got its PID after it exited (an adopted s3fs is not our child: nothing keeps its PID).
#[derive(Debug)]
pub struct Pidfd {
    fd: std::os::fd::OwnedFd,
}

impl Pidfd {
    /// A pidfd of `pid`. Check that the process is the one you want *after* this returns:
    /// then the fd is known to refer to it.
    fn open(pid: u32) -> std::io::Result<Pidfd> {
        use std::os::fd::FromRawFd;
        let pid = nix::libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::from_raw_os_error(nix::libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed. A non-negative result is a fresh fd that nothing else owns.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd =
            i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EBADF))?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Pidfd {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// True until the process exits (a pidfd becomes readable when it does, zombie or not).
    fn is_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = nix::libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: nix::libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1, no timeout; the fd stays open for the call.
        let n = unsafe { nix::libc::poll(&mut p, 1, 0) };
        n == 0
    }

    /// Send `sig` to the held process; ESRCH once it has exited.
    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with a valid pidfd, a valid signal number, a null siginfo
        // (allowed: the kernel fills it as for kill(2)) and no flags.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as nix::libc::c_int,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }
}

/// An s3fs proven ours (see [`our_s3fs`]): held by a pidfd where the kernel (or a container's
/// seccomp profile) allows one, else by its bare PID (then watched, never signalled).
#[derive(Debug)]
pub struct Found<P = Pidfd> {
    pub pid: u32,
    pub pidfd: Option<P>,
}

impl<P> Found<P> {
    /// True until the process exits.
    pub fn is_alive<S: Sys<Pidfd = P>>(&self, sys: &S) -> bool {
        match &self.pidfd {
            Some(fd) => sys.pidfd_alive(fd),
            None => sys.pid_alive(self.pid),
        }
    }

    /// Signal it through the pidfd, so never a process that reused its PID. Without one
    /// (where pidfds are refused) the proof is not tied to the process, so it is not
    /// signalled at all: EPERM.
    pub fn signal<S: Sys<Pidfd = P>>(&self, sys: &S, sig: Signal) -> Result<(), Errno> {
        match &self.pidfd {
            Some(fd) => sys.pidfd_signal(fd, sig),
            None => Err(Errno::EPERM),
        }
    }
}

/// The s3fs bai-s3 runs: the daemon's own uid and the configured program's file.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    /// The configured s3fs program (see [`Sys::program_file`]); None when it cannot be found, and
    /// then no process is ours.
    pub exe: Option<(FileId, PathBuf)>,
}

impl Owner {
    /// Who bai-s3's s3fs processes are on `sys`, for the program `program` (`--s3fs`).
    pub fn of<S: Sys>(sys: &S, program: &str) -> Owner {
        Owner {
            uid: sys.uid(),
            exe: sys.program_file(program),
        }
    }

    /// True when the kernel's word on a process says it is ours and names `path`: real and
    /// effective uid are the daemon's (no other user can dress a process up as one of these),
    /// and its executable is the configured s3fs, by device and inode, or by its old path
    /// once an upgrade replaced that file (only a user who may replace it could run one).
    pub fn owns(&self, info: &ProcInfo, path: &Path) -> bool {
        let Some((id, canonical)) = &self.exe else {
            return false;
        };
        let deleted = {
            let mut p = canonical.as_os_str().to_os_string();
            p.push(" (deleted)");
            p
        };
        info.uid == (self.uid, self.uid)
            && (info.exe == Some(*id) || info.exe_path.as_os_str() == deleted)
            && info.args.iter().any(|a| a.as_os_str() == path.as_os_str())
    }
}

/// Prove that `pid` is bai-s3's s3fs of the mount at `path` (see [`Owner::owns`]): its pidfd
/// is taken first, the kernel's word read after, and the process must still be alive through
/// that pidfd once the reading is done, so the word was about the process the pidfd holds
/// (its PID cannot have been reused meanwhile). None: not ours, or gone.
pub fn prove<S: Sys>(sys: &S, owner: &Owner, pid: u32, path: &Path) -> Option<Found<S::Pidfd>> {
    let pidfd = match sys.pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => return None,
        Err(_) => None,
    };
    let info = sys.process_info(pid)?;
    if !owner.owns(&info, path) {
        return None;
    }
    let found = Found { pid, pidfd };
    found.is_alive(sys).then_some(found)
}

/// Every s3fs proven bai-s3's that serves (or starts for) the mount at `path`, and how many
/// processes named it without being ours (impostors or another user's; never signalled).
pub fn our_s3fs<S: Sys>(sys: &S, owner: &Owner, path: &Path) -> (Vec<Found<S::Pidfd>>, usize) {
    let candidates = sys.processes_with_arg(&|a| (a.as_os_str() == path.as_os_str()).then_some(()));
    let mut ours = Vec::new();
    let mut others = 0;
    for (pid, ()) in candidates {
        match prove(sys, owner, pid, path) {
            Some(f) => ours.push(f),
            None => others += 1,
        }
    }
    (ours, others)
}

/// The s3fs serving the mount at `path`, proven ours (see [`our_s3fs`]).
pub fn s3fs_of<S: Sys>(sys: &S, owner: &Owner, path: &Path) -> Option<Found<S::Pidfd>> {
    our_s3fs(sys, owner, path).0.into_iter().next()
}

/// A started s3fs: its PID, its pidfd (taken before anything can reap it, so it is that
/// process; kept for as long as it runs), and a future that resolves when it exits (and reaps
/// it).
pub struct Spawned<P = Pidfd> {
    pub pid: u32,
    pub pidfd: Option<P>,
    pub exited: Pin<Box<dyn Future<Output = std::io::Result<ExitStatus>> + Send>>,
}

/// A volume's bind: `source` onto `target` (see `bind` in this module for `shown` and `read_only`), then
/// the check that the new mount at `view.0` is a view of the s3fs mounted at `view.1` of
/// exactly the prefix `view.2` (see [`resolve::check_view`]); a wrong bind is undone.
pub struct BindView<'a> {
    pub source: BorrowedFd<'a>,
    pub target: BorrowedFd<'a>,
    pub shown: (&'a Path, &'a Path),
    pub read_only: Option<(&'a Path, &'a str)>,
    pub view: (&'a Path, &'a Path, Option<&'a str>),
}

/// Every system call and process operation the s3fs mounter makes, so that its rules (adopt,
/// sweep, release, timeouts, health) can be tested without root, s3fs or FUSE, over a fake
/// mount and process table (in the style of youki's `Syscall` trait). [`Linux`] is the real
/// one. Calls that may block on a FUSE path (`statvfs`, `fuse_ready`, `bind_view`, `unmount`)
/// are made by the mounter through [`super::bounded`], never on the async threads.
pub trait Sys: Send + Sync + 'static {
    /// What holds a process so that signals never reach one that reused its PID.
    type Pidfd: Send + Sync + std::fmt::Debug + 'static;

    /// The mount table of this process's namespace.
    fn mounts(&self) -> Vec<MountEntry>;
    /// Unmount `path`; a busy or dead mount is detached lazily (it goes away when its last
    /// user does). Not being mounted is success.
    fn unmount(&self, path: &Path) -> Result<(), TableError>;
    /// Bind a volume (see [`BindView`]).
    fn bind_view(&self, b: BindView<'_>) -> Result<(), MountError>;
    /// Ask the mounted file system whether it answers: a dead FUSE mount still answers `stat`
    /// of its root from the kernel's cache, but `statvfs` reaches the daemon (ENOTCONN when
    /// gone).
    fn statvfs(&self, path: &Path) -> Result<(), Errno>;
    /// True when `path` is a FUSE mount whose root answers statvfs and can be listed.
    fn fuse_ready(&self, path: &Path) -> bool;
    /// Start the (already configured) s3fs command.
    fn spawn(&self, cmd: Command) -> std::io::Result<Spawned<Self::Pidfd>>;
    /// Live processes, whatever their `argv[0]`, with an argument `pick` accepts: candidates
    /// only, to be proven with [`prove`].
    fn processes_with_arg<T>(&self, pick: &dyn Fn(&Path) -> Option<T>) -> Vec<(u32, T)>;
    /// What the kernel says about `pid` (see [`ProcInfo`]); None when it is gone.
    fn process_info(&self, pid: u32) -> Option<ProcInfo>;
    /// The resident memory of `pid` (`VmRSS` of `/proc/PID/status`), in bytes; None when it
    /// is gone. Read by PID: meaningful for a process held by a pidfd that is still alive
    /// after the reading.
    fn resident_bytes(&self, pid: u32) -> Option<u64>;
    /// The executable that `program` names: a path, or a name looked up in `PATH` as the spawn
    /// does; its identity and its canonical path.
    fn program_file(&self, program: &str) -> Option<(FileId, PathBuf)>;
    /// The daemon's effective uid: the uid its s3fs processes run as.
    fn uid(&self) -> u32;
    /// True while `pid` exists and is not a zombie.
    fn pid_alive(&self, pid: u32) -> bool;
    /// Signal by bare PID (only where no pidfd could be had).
    fn kill(&self, pid: u32, sig: Signal) -> Result<(), Errno>;
    /// A pidfd of `pid`. Check that the process is the one you want *after* this returns:
    /// then the fd is known to refer to it.
    fn pidfd_open(&self, pid: u32) -> std::io::Result<Self::Pidfd>;
    /// True until the process exits (a pidfd becomes readable when it does, zombie or not).
    fn pidfd_alive(&self, fd: &Self::Pidfd) -> bool;
    /// Send `sig` to the held process; ESRCH once it has exited.
    fn pidfd_signal(&self, fd: &Self::Pidfd, sig: Signal) -> Result<(), Errno>;
}

/// The real system: the one way the mount layer reaches the kernel (the private functions of
/// this module are its parts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Linux;

impl Sys for Linux {
    type Pidfd = Pidfd;

    fn mounts(&self) -> Vec<MountEntry> {
        read_mounts()
    }

    fn unmount(&self, path: &Path) -> Result<(), TableError> {
        unmount(path)
    }

    fn bind_view(&self, b: BindView<'_>) -> Result<(), MountError> {
        bind(b.source, b.target, b.shown, b.read_only)
            .map_err(MountError::Table)
            .and_then(|()| resolve::check_view(self, b.view.0, b.view.1, b.view.2))
    }

    fn statvfs(&self, path: &Path) -> Result<(), Errno> {
        nix::sys::statvfs::statvfs(path).map(|_| ())
    }

    fn fuse_ready(&self, path: &Path) -> bool {
        const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
        let Ok(st) = nix::sys::statfs::statfs(path) else {
            return false;
        };
        if st.filesystem_type().0 != FUSE_SUPER_MAGIC {
            return false;
        }
        fs::read_dir(path).is_ok()
    }

    fn spawn(&self, mut cmd: Command) -> std::io::Result<Spawned> {
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        // Nothing reaps the child before `wait` below is polled: the PID is still ours.
        let pidfd = Pidfd::open(pid).ok();
        Ok(Spawned {
            pid,
            pidfd,
            exited: Box::pin(async move { child.wait().await }),
        })
    }

    fn processes_with_arg<T>(&self, pick: &dyn Fn(&Path) -> Option<T>) -> Vec<(u32, T)> {
        scan_args(None, pick)
    }

    fn process_info(&self, pid: u32) -> Option<ProcInfo> {
        proc_info(pid)
    }

    fn resident_bytes(&self, pid: u32) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse_vm_rss(&status)
    }

    fn program_file(&self, program: &str) -> Option<(FileId, PathBuf)> {
        program_file(program)
    }

    fn uid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn pid_alive(&self, pid: u32) -> bool {
        is_alive(pid)
    }

    fn kill(&self, pid: u32, sig: Signal) -> Result<(), Errno> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
    }

    fn pidfd_open(&self, pid: u32) -> std::io::Result<Pidfd> {
        Pidfd::open(pid)
    }

    fn pidfd_alive(&self, fd: &Pidfd) -> bool {
        fd.is_alive()
    }

    fn pidfd_signal(&self, fd: &Pidfd, sig: Signal) -> Result<(), Errno> {
        fd.signal(sig)
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes (the kernel writes it in kB). A kernel
/// thread has none.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// True when the error says a FUSE mount's connection is gone (its s3fs died or was aborted):
/// the one sign that a mount is dead rather than slow.
pub fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::ENOTCONN | Errno::ECONNABORTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 0:52 / /var/lib/bai-s3/volumes/.s3fs/default-abc rw,nosuid - fuse.s3fs s3fs rw\n\
                    37 35 0:52 /projects/alpha /var/lib/bai-s3/volumes/v1 ro - fuse.s3fs s3fs rw\n\
                    38 35 8:1 / /mnt/with\\040space rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].dev, "0:52");
        assert_eq!(m[1].root, Path::new("/projects/alpha"));
        assert_eq!(m[0].fs_type, "fuse.s3fs");
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
        assert_eq!(
            mount_at(&m, Path::new("/var/lib/bai-s3/volumes/v1"))
                .unwrap()
                .dev,
            "0:52"
        );
    }

    /// The processes whose arguments include `arg`, as the real system finds them.
    fn with_arg(arg: &str) -> Vec<u32> {
        Linux
            .processes_with_arg(&|a| (a.as_os_str() == arg).then_some(()))
            .into_iter()
            .map(|(pid, ())| pid)
            .collect()
    }

    #[test]
    fn a_child_is_found_by_its_argument_while_alive_and_not_after() {
        assert!(Linux.pid_alive(std::process::id()));
        assert!(!Linux.pid_alive(u32::MAX - 1));
        // `sleep` sums its arguments: a unique fraction of a second names this child alone.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let arg = format!("0.{}{nanos:09}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .args(["30", &arg])
            .spawn()
            .unwrap();
        let pid = child.id();
        // spawn returns once exec has closed the child's descriptors, a moment before the
        // kernel sets up the new argv: until then /proc/PID/cmdline reads empty.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while with_arg(&arg).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "never found by its argument"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(with_arg(&arg), vec![pid]);
        assert!(Linux.pid_alive(pid));
        assert!(Linux.resident_bytes(pid).is_some_and(|b| b > 0));
        let info = Linux.process_info(pid).unwrap();
        assert!(info.args.iter().any(|a| a.as_os_str() == arg.as_str()));
        child.kill().unwrap();
        // Exited and not yet reaped (a zombie) is not alive, and not found.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Linux.pid_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(with_arg(&arg).is_empty());
        child.wait().unwrap();
        assert!(with_arg(&arg).is_empty());
        assert_eq!(Linux.resident_bytes(pid), None);
    }

    #[test]
    fn resident_memory_is_read_in_bytes() {
        let status = "Name:\ts3fs\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn a_pidfd_sees_its_process_exit_and_signals_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id()).unwrap();
        assert!(fd.is_alive());
        fd.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = child.wait();
        assert!(!fd.is_alive());
        assert_eq!(
            fd.signal(nix::sys::signal::Signal::SIGKILL),
            Err(Errno::ESRCH)
        );
    }
}
