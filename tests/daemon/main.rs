//! The real `bai-s3 serve`, spoken to over its unix socket as dockerd does, mounting real s3fs
//! against a real SeaweedFS. Every test has its own daemon (own socket, state and mount root);
//! the tests of this binary share one SeaweedFS, except the one that needs it stopped. One module
//! a scenario:
//!
//! - `protocol_calls`: the calls as dockerd makes them;
//! - `data_through_the_mount`: files to objects and objects to files;
//! - `shared_s3fs`: holders, IDs and the one s3fs per bucket;
//! - `volume_options`: `ro`, `prefix`, `uid`/`gid`/`umask`;
//! - `refusals`: refused Creates and Removes;
//! - `restarts_and_outages`: the store down, the daemon or s3fs killed;
//! - `backends_file`: reread, refused when open, its secret nowhere;
//! - `open_files_limit`: the limit the daemon and its s3fs run with.
#[path = "../support/mod.rs"]
mod support;

mod backends_file;
mod data_through_the_mount;
mod open_files_limit;
mod protocol_calls;
mod refusals;
mod restarts_and_outages;
mod shared_s3fs;
mod volume_options;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A status value that is a boolean, or a string "true"/"false".
fn boolish(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Waits until `mp` is no longer a mount point and no s3fs of the daemon is alive.
fn wait_unmounted(d: &Daemon, mp: &Path) {
    let done = poll(Duration::from_secs(15), || {
        (!is_mountpoint(mp) && d.s3fs_pids().is_empty()).then_some(())
    });
    assert!(
        done.is_some(),
        "after the last Unmount: mounted={} s3fs={:?}\n{}",
        is_mountpoint(mp),
        d.s3fs_pids(),
        d.logs_tail(40)
    );
}

/// The daemon's one s3fs; fails unless there is exactly one.
fn one_s3fs(d: &Daemon) -> i32 {
    let pids = d.s3fs_pids();
    assert_eq!(
        pids.len(),
        1,
        "expected exactly one s3fs for the daemon, found {pids:?}"
    );
    pids[0]
}
