//! What a test leaves behind: the leftover checks, the forced removal of mounts and s3fs, the
//! daemon's Drop, waiting until nothing of a daemon is mounted, and mounts a test makes itself
//! (`mount_guarded`), detached however the test ends.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;

impl Daemon {
    /// Checks now (with a short grace for s3fs to exit) that this daemon has no s3fs process and
    /// no mount left. Returns a description of what is left.
    pub fn leftovers(&self) -> Option<String> {
        let clean = poll(Duration::from_secs(10), || {
            (self.s3fs_pids().is_empty() && self.mounts().is_empty()).then_some(())
        });
        if clean.is_some() {
            return None;
        }
        Some(format!(
            "s3fs processes: {:?}; mounts: {:?}",
            self.s3fs_pids()
                .iter()
                .map(|p| format!("{p}: {}", cmdline(*p).join(" ")))
                .collect::<Vec<_>>(),
            self.mounts()
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>()
        ))
    }

    pub fn assert_clean(&self) {
        if let Some(l) = self.leftovers() {
            panic!("left behind after the test: {l}\n{}", self.logs_tail(60));
        }
    }

    /// Removes every mount in the daemon's directory (lazily, deepest first) and kills every
    /// s3fs mentioning it.
    fn force_cleanup(&self) {
        let mut mounts = self.all_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in &mounts {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        for pid in self.all_s3fs_pids() {
            let _ = sigkill(pid);
        }
        let _ = poll(Duration::from_secs(10), || {
            (self.all_s3fs_pids().is_empty() && self.all_mounts().is_empty()).then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // What the test left, checked while the daemon still runs.
        let left = if self.expect_clean_end && !panicking && self.child.is_some() {
            self.leftovers()
        } else {
            None
        };
        let logs = self.logs_tail(60);
        self.stop();
        self.force_cleanup();
        let still =
            (!self.all_s3fs_pids().is_empty() || !self.all_mounts().is_empty()).then(|| {
                format!(
                    "s3fs {:?}, mounts {:?}",
                    self.all_s3fs_pids(),
                    self.all_mounts()
                        .iter()
                        .map(|m| m.mount_point.clone())
                        .collect::<Vec<_>>()
                )
            });
        if still.is_some() {
            // Never let TempDir's recursive removal walk into a live FUSE mount (it would delete
            // objects): keep the directory.
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        }
        if panicking {
            say(&format!(
                "(daemon dir kept for inspection: {})",
                self.dir.display()
            ));
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
            say(&logs);
            return;
        }
        if let Some(s) = still {
            panic!(
                "cleanup could not remove everything of {}: {s}",
                self.dir.display()
            );
        }
        if let Some(l) = left {
            panic!("the test ended with s3fs processes or mounts of its daemon still there: {l}\n{logs}");
        }
    }
}

/// Waits until nothing of the daemon is mounted and no s3fs of it runs.
pub fn wait_all_unmounted(d: &Daemon) {
    wait_nothing_mounted(d, "after the last Unmount", Duration::from_secs(20));
}

/// Waits up to `within` until nothing of the daemon is mounted and no s3fs of it runs; the
/// panic says `why` and carries the daemon's log.
pub fn wait_nothing_mounted(d: &Daemon, why: &str, within: Duration) {
    let done = poll(within, || {
        (d.mounts().is_empty() && d.s3fs_pids().is_empty()).then_some(())
    });
    assert!(
        done.is_some(),
        "{why}: still mounted {:?}, s3fs {:?}\n{}",
        d.mounts()
            .iter()
            .map(|m| m.mount_point.display().to_string())
            .collect::<Vec<_>>(),
        d.s3fs_pids(),
        d.logs_tail(60)
    );
}

/// Detaches a mount the test made when dropped (also when the test fails; after a daemon
/// declared later is gone).
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs `cmd`, which must succeed.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mount ARGS AT` (AT made when missing); detached when dropped.
pub fn mount_guarded<S: AsRef<OsStr>>(at: &Path, args: &[S]) -> Mounted {
    fs::create_dir_all(at).unwrap();
    run_ok(Command::new("mount").args(args).arg(at));
    Mounted(at.to_path_buf())
}
