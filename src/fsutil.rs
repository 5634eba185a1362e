//! Folders the daemon owns, opened without following symbolic links.
//!
//! bai-s3 runs as root next to things it must not trust: bucket contents (through s3fs, where a
//! bucket writer can make any name a symbolic link), container users and local users. So every
//! path the daemon derives is walked one component at a time from an fd of a folder it checked,
//! with `O_NOFOLLOW`, and missing components are made with `mkdirat` on those fds: a link met on
//! the way is an error, never followed. The state folder and the mount root are checked once at
//! start: a real folder owned by root that no one else can reach; an existing folder that fails
//! the check is refused (naming it and what is wrong), never chmod-ed.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};

use crate::layout;

/// Why a folder of the daemon's own cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(
        "{path} is a symbolic link; bai-s3 follows no link to its own folders: give the real path"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is not a folder")]
    NotDir { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by uid {me} that runs bai-s3; it is refused")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} is open to group or others (mode {mode:04o}); bai-s3 keeps its state and every mounted volume only in root-only folders and does not change the mode of a folder it did not create: run `chmod 700 {path}` or choose another folder")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is readable or writable by group or others (mode {mode:04o}); it keys the names of shared mounts and is refused: run `chmod 600 {path}`")]
    FileTooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is writable by group or others (mode {mode:04o}), so others could replace what bai-s3 keeps there; it is refused: run `chmod go-w {path}`")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the mount root {mount_root} {why}; volumes are mounted at <mount root>/<volume name>, so a volume could be mounted over it: give --mount-root and --state-dir folders apart (the mount root may be a folder of its own inside the state folder, as the default {default} is)", default = "/var/lib/bai-s3/volumes")]
    Overlap { mount_root: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(Errno) -> DirError + '_ {
    move |e| DirError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// What a checked folder must be besides a real folder owned by root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privacy {
    /// No access at all for group and others (mode 0700 or less).
    Private,
    /// Private, or not writable by group or others and inside a root-owned folder that group
    /// and others may not enter: reachable by root only either way. This is the mount root's
    /// rule, so that the default mount root inside the 0700 state folder (0755 when an older
    /// version made it) and the managed plugin's propagatedMount (0755, made by dockerd, inside
    /// the plugin's 0700 `/var/lib/bai-s3`) are accepted without a chmod.
    Unreachable,
}

/// Take ownership of an fd the kernel just returned.
fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful open call one line earlier and is owned by no
    // other value, so `OwnedFd` is its only owner and closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Flags of every folder fd here: a path-only handle (no FUSE opendir round trip), usable as
/// the `dirfd` of `*at` calls and as a bind mount's source or target via `/proc/self/fd/N`.
fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The path through which the kernel reaches exactly the folder an fd holds (for mount(2),
/// which takes paths): no name is looked up again.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Open the folder at `path`, whose last component must not be a symbolic link. (Its parents
/// are the admin's choice, given as a flag, and are followed.)
pub fn open_dir(path: &Path) -> Result<OwnedFd, DirError> {
    match nix::fcntl::open(path, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(own(fd)),
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => Err(kind_of(None, path, path)),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Tell a symbolic link from another non-folder at `name` in `dir` (or at `path`).
fn kind_of(dir: Option<BorrowedFd<'_>>, name: &Path, path: &Path) -> DirError {
    let st = fstatat(
        dir.map(|d| d.as_raw_fd()),
        name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    match st {
        Ok(st) if is(&st, SFlag::S_IFLNK) => DirError::Symlink {
            path: path.to_path_buf(),
        },
        Ok(_) => DirError::NotDir {
            path: path.to_path_buf(),
        },
        Err(e) => io_err(path)(e),
    }
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Create (0700) or check the folder at `path` as `privacy` says, returning an fd of it. A
/// folder made here is private by construction; an existing one is never changed.
pub fn checked_dir(path: &Path, privacy: Privacy) -> Result<OwnedFd, DirError> {
    let name = path.file_name().ok_or_else(|| DirError::NotDir {
        path: path.to_path_buf(),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| DirError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    let parent_fd = nix::fcntl::open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        .map(own)
        .map_err(io_err(parent))?;
    let name = Path::new(name);
    let mut created = false;
    let fd = loop {
        match openat(
            Some(parent_fd.as_raw_fd()),
            name,
            dir_flags(),
            Mode::empty(),
        ) {
            Ok(fd) => break own(fd),
            Err(Errno::ENOENT) if !created => {
                match mkdirat(
                    Some(parent_fd.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => created = true,
                    Err(e) => return Err(io_err(path)(e)),
                }
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(kind_of(Some(parent_fd.as_fd()), name, path))
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    };
    let st = fstat(fd.as_raw_fd()).map_err(io_err(path))?;
    check_mode(path, &st, privacy)?;
    Ok(fd)
}

/// The ownership and mode rule of [`checked_dir`] for an open folder.
fn check_mode(path: &Path, st: &FileStat, privacy: Privacy) -> Result<(), DirError> {
    if st.st_uid != me() {
        return Err(DirError::WrongOwner {
            path: path.to_path_buf(),
            owner: st.st_uid,
            me: me(),
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    match privacy {
        Privacy::Private => Err(DirError::TooOpen {
            path: path.to_path_buf(),
            mode,
        }),
        Privacy::Unreachable if mode & 0o022 != 0 => Err(DirError::Writable {
            path: path.to_path_buf(),
            mode,
        }),
        Privacy::Unreachable if closed_ancestor(path).is_some() => Ok(()),
        Privacy::Unreachable => Err(DirError::TooOpen {
            path: path.to_path_buf(),
            mode,
        }),
    }
}

/// The nearest folder above `path` that is owned by root and that group and others may not
/// enter, if any: nothing below it is reachable by anyone but root.
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    let parent = fs::canonicalize(path.parent()?).ok()?;
    parent
        .ancestors()
        .find(|a| {
            fs::metadata(a)
                .map(|m| m.uid() == 0 && m.mode() & 0o011 == 0)
                .unwrap_or(false)
        })
        .map(Path::to_path_buf)
}

/// Why a path below a checked folder could not be opened, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeneathError {
    /// The path from the starting folder up to and including the component at fault.
    pub component: String,
    pub kind: Beneath,
}

/// What was wrong with [`BeneathError::component`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beneath {
    Symlink,
    NotDir,
    /// Another file system is mounted there.
    OtherFs,
    /// It does not exist (and was not to be created).
    Missing,
    /// Not a plain name (`..`, `.`, absolute).
    NotPlain,
    Io(Errno),
}

impl std::fmt::Display for BeneathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.component;
        match &self.kind {
            Beneath::Symlink => write!(f, "{c:?} is a symbolic link"),
            Beneath::NotDir => write!(f, "{c:?} is not a folder"),
            Beneath::OtherFs => write!(f, "{c:?} is another file system mounted there"),
            Beneath::Missing => write!(f, "{c:?} does not exist"),
            Beneath::NotPlain => write!(f, "{c:?} is not a plain name"),
            Beneath::Io(e) => write!(f, "{c:?}: {}", e.desc()),
        }
    }
}

impl std::error::Error for BeneathError {}

/// Open the folder `rel` below `dir` without leaving it: no component may be a symbolic link,
/// `..`, or (with `same_fs`) a mount point. Missing components are made with `mode` when it is
/// given (`mkdirat` on the fd of their parent, never by path), else they are an error.
///
/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (and `RESOLVE_NO_XDEV`) answers in
/// one call when everything exists; otherwise, or where the kernel lacks it, the walk one
/// `O_NOFOLLOW` component at a time finds the fault and makes what is missing.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    mode: Option<u32>,
    same_fs: bool,
) -> Result<OwnedFd, BeneathError> {
    let mut resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
    if same_fs {
        resolve |= ResolveFlag::RESOLVE_NO_XDEV;
    }
    let how = OpenHow::new().flags(dir_flags()).resolve(resolve);
    // RESOLVE_BENEATH allows a `..` that stays inside: plain names only, or the walk refuses.
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if plain && !rel.as_os_str().is_empty() {
        if let Ok(fd) = openat2(dir.as_raw_fd(), rel, how) {
            return Ok(own(fd));
        }
    }
    walk(dir, rel, mode, same_fs)
}

/// The component-by-component fallback of [`open_beneath`] (also what explains its errors).
fn walk(
    dir: BorrowedFd<'_>,
    rel: &Path,
    mode: Option<u32>,
    same_fs: bool,
) -> Result<OwnedFd, BeneathError> {
    let mut shown = PathBuf::new();
    let fail = |shown: &Path, kind| BeneathError {
        component: shown.display().to_string(),
        kind,
    };
    let dev = fstat(dir.as_raw_fd())
        .map_err(|e| fail(Path::new("."), Beneath::Io(e)))?
        .st_dev;
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.components() {
        let name: &OsStr = match comp {
            Component::Normal(n) => n,
            other => {
                shown.push(other.as_os_str());
                return Err(fail(&shown, Beneath::NotPlain));
            }
        };
        shown.push(name);
        let at = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let mut made = false;
        let fd = loop {
            match openat(Some(at.as_raw_fd()), name, dir_flags(), Mode::empty()) {
                Ok(fd) => break own(fd),
                Err(Errno::ENOENT) => match mode {
                    Some(m) if !made => {
                        match mkdirat(Some(at.as_raw_fd()), name, Mode::from_bits_truncate(m)) {
                            Ok(()) | Err(Errno::EEXIST) => made = true,
                            Err(e) => return Err(fail(&shown, Beneath::Io(e))),
                        }
                    }
                    _ => return Err(fail(&shown, Beneath::Missing)),
                },
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    let st = fstatat(Some(at.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW);
                    let kind = match st {
                        Ok(st) if is(&st, SFlag::S_IFLNK) => Beneath::Symlink,
                        Ok(_) => Beneath::NotDir,
                        Err(e) => Beneath::Io(e),
                    };
                    return Err(fail(&shown, kind));
                }
                Err(e) => return Err(fail(&shown, Beneath::Io(e))),
            }
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| fail(&shown, Beneath::Io(e)))?;
        if same_fs && st.st_dev != dev {
            return Err(fail(&shown, Beneath::OtherFs));
        }
        cur = Some(fd);
    }
    match cur {
        Some(fd) => Ok(fd),
        // An empty path: the folder itself.
        None => nix::unistd::dup(dir.as_raw_fd())
            .map(own)
            .map_err(|e| fail(Path::new("."), Beneath::Io(e))),
    }
}

/// A sub-folder of a checked folder (`logs`, `tmp/<name>`...), made 0700 when missing and
/// refused when it is a link, not a folder, not root's, or writable by others.
pub fn sub_dir(root: &Path, rel: &Path) -> Result<OwnedFd, DirError> {
    let path = root.join(rel);
    let root_fd = open_dir(root)?;
    let fd = open_beneath(root_fd.as_fd(), rel, Some(0o700), false).map_err(|e| match e.kind {
        Beneath::Symlink => DirError::Symlink {
            path: root.join(&e.component),
        },
        Beneath::NotDir => DirError::NotDir {
            path: root.join(&e.component),
        },
        Beneath::Io(errno) => DirError::Io {
            path: root.join(&e.component),
            source: io::Error::from(errno),
        },
        _ => DirError::Io {
            path: root.join(&e.component),
            source: io::Error::other(e.to_string()),
        },
    })?;
    let st = fstat(fd.as_raw_fd()).map_err(io_err(&path))?;
    // Inside a private folder: readable is harmless, writable by others is not.
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me() {
        return Err(DirError::WrongOwner {
            path,
            owner: st.st_uid,
            me: me(),
        });
    }
    if mode & 0o022 != 0 {
        return Err(DirError::Writable { path, mode });
    }
    Ok(fd)
}

/// Open (create 0600 when missing) the file `name` in the folder `dir` for appending, without
/// following a link at `name`.
pub fn open_private_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<fs::File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(io::Error::from)?;
    Ok(fs::File::from(own(fd)))
}

/// `p` made absolute, its longest existing ancestor resolved by the kernel (links followed)
/// and the rest appended as written, so paths can be compared before anything is made.
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(base) {
            let mut out = real;
            for c in rest.iter().rev() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuse, before anything is made, a mount root that overlaps the daemon's own files: a volume
/// named `logs` or `tmp` would otherwise be bound over the daemon's folders, and one named like
/// the backends file over its configuration (a bucket's object read as backends).
pub fn check_layout(state_dir: &Path, mount_root: &Path, config: &Path) -> Result<(), DirError> {
    // A link as either folder is refused as such (the folders' own check says so too), before
    // its target is compared.
    for p in [state_dir, mount_root] {
        if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(DirError::Symlink {
                path: p.to_path_buf(),
            });
        }
    }
    let (state, root, config) = (resolved(state_dir), resolved(mount_root), resolved(config));
    let overlap = |why: String| {
        Err(DirError::Overlap {
            mount_root: mount_root.to_path_buf(),
            why,
        })
    };
    if root == state {
        return overlap(format!("is the state folder {}", state_dir.display()));
    }
    if state.starts_with(&root) {
        return overlap(format!("holds the state folder {}", state_dir.display()));
    }
    if config.starts_with(&root) {
        return overlap(format!("holds the backends file {}", config.display()));
    }
    if let Ok(inner) = root.strip_prefix(&state) {
        let first = inner
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if layout::STATE_ENTRIES.iter().any(|e| first.starts_with(e)) {
            return overlap(format!(
                "is {first:?} in the state folder {}, a name the daemon keeps its own files under",
                state_dir.display()
            ));
        }
    }
    Ok(())
}

/// At start, before anything is written: the state folder (private), the mount root
/// (reachable by root only), their sub-folders, and the key that names shared mounts.
pub fn prepare_daemon_folders(
    state_dir: &Path,
    mount_root: &Path,
) -> Result<[u8; KEY_LEN], DirError> {
    checked_dir(state_dir, Privacy::Private)?;
    checked_dir(mount_root, Privacy::Unreachable)?;
    for sub in layout::STATE_SUBDIRS {
        sub_dir(state_dir, Path::new(sub))?;
    }
    sub_dir(mount_root, Path::new(layout::SHARED_DIR))?;
    load_or_create_key(state_dir, layout::NAME_KEY_FILE)
}

/// Length of the key of [`load_or_create_key`].
pub const KEY_LEN: usize = 32;

/// A host-local random key kept in `dir/name` (0600, made once): it keys the hash that names
/// shared s3fs mounts, so that a name, which every local user can read in the mount table,
/// tells nothing about the secret key hashed into it.
pub fn load_or_create_key(dir: &Path, name: &str) -> Result<[u8; KEY_LEN], DirError> {
    let path = dir.join(name);
    let dir_fd = open_dir(dir)?;
    let read_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let opened = match openat(Some(dir_fd.as_raw_fd()), name, read_flags, Mode::empty()) {
        Ok(fd) => own(fd),
        Err(Errno::ENOENT) => {
            let mut key = [0u8; KEY_LEN];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut key))
                .map_err(|source| DirError::Io {
                    path: PathBuf::from("/dev/urandom"),
                    source,
                })?;
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
            let fd = openat(
                Some(dir_fd.as_raw_fd()),
                name,
                flags | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map(own)
            .map_err(io_err(&path))?;
            let mut f = fs::File::from(fd);
            io::Write::write_all(&mut f, &key)
                .and_then(|()| f.sync_all())
                .map_err(|source| DirError::Io {
                    path: path.clone(),
                    source,
                })?;
            return Ok(key);
        }
        Err(Errno::ELOOP) => return Err(DirError::Symlink { path }),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let st = fstat(opened.as_raw_fd()).map_err(io_err(&path))?;
    if st.st_uid != me() {
        return Err(DirError::WrongOwner {
            path,
            owner: st.st_uid,
            me: me(),
        });
    }
    if st.st_mode & 0o077 != 0 {
        return Err(DirError::FileTooOpen {
            path,
            mode: st.st_mode & 0o7777,
        });
    }
    let mut bytes = Vec::new();
    fs::File::from(opened)
        .read_to_end(&mut bytes)
        .map_err(|source| DirError::Io {
            path: path.clone(),
            source,
        })?;
    bytes.try_into().map_err(|b: Vec<u8>| DirError::Io {
        path,
        source: io::Error::other(format!(
            "holds {} bytes, not {KEY_LEN}; remove it and bai-s3 makes a new one",
            b.len()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("real/inner")).unwrap();
        fs::create_dir_all(r.join("outside")).unwrap();
        symlink("/", r.join("root-link")).unwrap();
        symlink(r.join("outside"), r.join("abs-link")).unwrap();
        symlink("../outside", r.join("real/rel-link")).unwrap();
        symlink("inner", r.join("real/sib-link")).unwrap();
        fs::write(r.join("file"), b"x").unwrap();
        t
    }

    fn base(t: &tempfile::TempDir) -> OwnedFd {
        open_dir(t.path()).unwrap()
    }

    #[test]
    fn plain_folders_open_and_missing_ones_are_made_beneath() {
        let t = tree();
        let b = base(&t);
        assert!(open_beneath(b.as_fd(), Path::new("real/inner"), None, true).is_ok());
        let e = open_beneath(b.as_fd(), Path::new("real/new/deeper"), None, true).unwrap_err();
        assert_eq!(
            (e.component.as_str(), e.kind),
            ("real/new", Beneath::Missing)
        );
        assert!(
            !t.path().join("real/new").exists(),
            "nothing made without a mode"
        );
        open_beneath(b.as_fd(), Path::new("real/new/deeper"), Some(0o700), true).unwrap();
        assert!(t.path().join("real/new/deeper").is_dir());
        let mode = fs::metadata(t.path().join("real/new")).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "made with the mode asked for: {mode:o}");
    }

    #[test]
    fn every_kind_of_link_is_refused_and_nothing_is_made_through_it() {
        let t = tree();
        let b = base(&t);
        for (rel, comp) in [
            ("root-link", "root-link"),
            ("root-link/x", "root-link"),
            ("abs-link", "abs-link"),
            ("abs-link/sub", "abs-link"),
            ("real/rel-link", "real/rel-link"),
            ("real/sib-link/x", "real/sib-link"),
        ] {
            for mode in [None, Some(0o755)] {
                let e = open_beneath(b.as_fd(), Path::new(rel), mode, true).unwrap_err();
                assert_eq!(e.kind, Beneath::Symlink, "{rel}: {e}");
                assert_eq!(e.component, comp, "{rel}");
            }
        }
        assert!(!t.path().join("outside/sub").exists());
        let e = open_beneath(b.as_fd(), Path::new("file/x"), Some(0o755), true).unwrap_err();
        assert_eq!((e.component.as_str(), e.kind), ("file", Beneath::NotDir));
        let e = open_beneath(b.as_fd(), Path::new("real/../outside"), None, true).unwrap_err();
        assert_eq!(e.kind, Beneath::NotPlain);
        let e = open_beneath(b.as_fd(), Path::new("/etc"), None, true).unwrap_err();
        assert_eq!(e.kind, Beneath::NotPlain);
    }

    #[test]
    fn the_walk_alone_refuses_the_same_links() {
        // The fallback where openat2 is missing must hold on its own.
        let t = tree();
        let b = base(&t);
        for rel in ["root-link/x", "abs-link", "real/sib-link/x"] {
            let e = walk(b.as_fd(), Path::new(rel), Some(0o755), true).unwrap_err();
            assert_eq!(e.kind, Beneath::Symlink, "{rel}");
        }
        assert!(walk(b.as_fd(), Path::new("real/inner"), None, true).is_ok());
        assert!(!t.path().join("outside/x").exists());
    }

    #[test]
    fn a_mount_root_over_the_daemons_own_files_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let config = t.path().join("etc/backends.toml");
        let refused = |root: &Path, state: &Path, config: &Path| {
            let e = check_layout(state, root, config).unwrap_err();
            assert!(matches!(e, DirError::Overlap { .. }), "{e}");
            e.to_string()
        };
        assert!(refused(&state, &state, &config).contains("is the state folder"));
        assert!(
            refused(&t.path().join("./state/../state/"), &state, &config)
                .contains("is the state folder")
        );
        for sub in ["logs", "tmp", "stage", "cache", "state.db-wal", "lock"] {
            let e = refused(&state.join(sub).join("v"), &state, &config);
            assert!(e.contains(sub), "{e}");
        }
        assert!(refused(t.path(), &state, &config).contains("holds the state folder"));
        assert!(refused(&t.path().join("etc"), &state, &config).contains("holds the backends file"));
        // Through a link: the kernel's answer counts, not the spelling.
        fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::symlink(&state, t.path().join("alias")).unwrap();
        assert!(refused(&t.path().join("alias/logs"), &state, &config).contains("logs"));
        // The default shape and folders apart are fine; nothing was made by the checks.
        check_layout(&state, &state.join("volumes"), &config).unwrap();
        check_layout(&state, &t.path().join("volumes"), &config).unwrap();
        assert!(!state.join("logs").exists() && !t.path().join("volumes").exists());
    }

    #[test]
    fn checked_dirs_are_made_private_and_open_ones_are_refused_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let made = t.path().join("a/b/state");
        checked_dir(&made, Privacy::Private).unwrap();
        assert_eq!(fs::metadata(&made).unwrap().mode() & 0o077, 0);

        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let e = checked_dir(&open, Privacy::Private)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&open.display().to_string()) && e.contains("0755"),
            "{e}"
        );
        assert_eq!(
            fs::metadata(&open).unwrap().mode() & 0o777,
            0o755,
            "unchanged"
        );

        let link = t.path().join("link");
        symlink(&made, &link).unwrap();
        let e = checked_dir(&link, Privacy::Private).unwrap_err();
        assert!(matches!(e, DirError::Symlink { .. }), "{e}");
    }

    #[test]
    fn an_open_folder_inside_a_closed_one_is_unreachable_enough() {
        let t = tempfile::tempdir().unwrap();
        let closed = t.path().join("closed");
        let inner = closed.join("volumes");
        fs::create_dir_all(&inner).unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        if nix::unistd::geteuid().is_root() {
            checked_dir(&inner, Privacy::Unreachable).unwrap();
        }
        assert!(checked_dir(&inner, Privacy::Private).is_err());
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o777)).unwrap();
        let e = checked_dir(&inner, Privacy::Unreachable).unwrap_err();
        assert!(
            matches!(e, DirError::Writable { .. } | DirError::WrongOwner { .. }),
            "{e}"
        );
    }

    #[test]
    fn a_key_is_made_once_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let k1 = load_or_create_key(t.path(), "k").unwrap();
        let k2 = load_or_create_key(t.path(), "k").unwrap();
        assert_eq!(k1, k2);
        assert_eq!(fs::metadata(t.path().join("k")).unwrap().mode() & 0o077, 0);
        fs::set_permissions(t.path().join("k"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(t.path(), "k").is_err());
    }
}
