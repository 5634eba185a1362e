//! Processes and the mount table, read from /proc (the one mountinfo parser of the tests).

use std::fs;
use std::path::{Path, PathBuf};

pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL to `pid`.
pub fn sigkill(pid: i32) -> nix::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
}

/// State letter of /proc/<pid>/stat (R, S, D, Z, ...), None when the process is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Parent pid from /proc/<pid>/stat.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Real and effective uid of `pid`.
pub fn uid_of(pid: i32) -> Option<(u32, u32)> {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = st.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|x| x.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// Exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_s3fs(pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "s3fs" {
        return true;
    }
    cmdline(pid)
        .first()
        .map(|a0| {
            Path::new(a0)
                .file_name()
                .map(|f| f == "s3fs")
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Live (non-zombie) s3fs processes with an argument mentioning `path`.
pub fn s3fs_pids_mentioning(path: &Path) -> Vec<i32> {
    let needle = path.to_string_lossy().into_owned();
    let mut v: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| is_s3fs(*p) && process_alive(*p))
        .filter(|p| cmdline(*p).iter().any(|a| a.contains(&needle)))
        .collect();
    v.sort();
    v
}

#[derive(Clone, Debug)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// This mount's own flags (`ro`/`rw`, `nosuid`, `nodev`, ...), which a bind remount sets.
    pub options: String,
    /// The file system's (superblock's) options: `ro` here holds for every bind of it.
    pub super_options: String,
}

impl MountEntry {
    /// True when the per-mount flags include `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.options.split(',').any(|o| o == flag)
    }

    /// True when the superblock's options include `opt`.
    pub fn super_has(&self, opt: &str) -> bool {
        self.super_options.split(',').any(|o| o == opt)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mountinfo() -> Vec<MountEntry> {
    let s = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(f.get(4)?)),
                options: f.get(5)?.to_string(),
                fs_type: f.get(sep + 1)?.to_string(),
                source: unescape_mountinfo(f.get(sep + 2)?),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Mounts at `root` or below it.
pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect()
}

pub fn is_mountpoint(path: &Path) -> bool {
    mountinfo().iter().any(|m| m.mount_point == path)
}

/// The mount entry at exactly `path` (the last one when stacked).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mountinfo().into_iter().rfind(|m| m.mount_point == path)
}

/// statvfs of the path works (a dead FUSE mount answers stat from cache but not statvfs).
pub fn statvfs_ok(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path).is_ok()
}
