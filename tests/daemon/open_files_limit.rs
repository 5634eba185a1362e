//! The daemon, started with a low soft limit of open files, raises it to the hard one: it keeps
//! a pidfd and a watcher per s3fs.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_open_files_limit_is_raised_to_the_hard_one() {
    // A pidfd and a child watcher per s3fs: hundreds of buckets pass the soft limit of 1024
    // that containers get by default, so the daemon raises it as Go programs do.
    let test = "the_open_files_limit_is_raised_to_the_hard_one";
    if !prereqs(test) {
        return;
    }
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let soft = 64.min(hard);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let socket = dir.join("s.sock");
    let log = fs::File::create(dir.join("log")).unwrap();
    let mut cmd = serve_command(
        &socket,
        &dir.join("state"),
        &dir.join("mnt"),
        &dir.join("b.toml"),
    );
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: setrlimit and prctl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(io::Error::from)
        });
    }
    let mut child = cmd.spawn().expect("spawn bai-s3 serve");
    let listening = poll(Duration::from_secs(20), || {
        plugin_call(&socket, "Plugin.Activate", "").ok()
    });
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let logs = fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(listening.is_some(), "not listening:\n{logs}");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files limit in:\n{limits}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums, vec![hard, hard], "{line}\n{logs}");
    if soft < hard {
        assert!(logs.contains("open files limit raised"), "{logs}");
    }
}
