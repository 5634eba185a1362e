//! Faults and concurrency, each proven by a test that tries it, one module a scenario:
//!
//! - `killed_daemon`: the daemon killed at random points of a Mount/Unmount workload;
//! - `killed_s3fs`: s3fs killed under a mounted volume, repaired by the health check;
//! - `store_down`: the object store down, and back;
//! - `state_folder_unwritable`: a read-only or full state folder;
//! - `damaged_state_file`: a truncated or garbage state file at start;
//! - `backends_file_changed`: the backends file changed or broken while volumes are mounted;
//! - `racing_clients`: many clients racing on a few volumes, last holders leaving at once.
//!
//! Every test talks to the real `bai-s3 serve` over its socket, with real s3fs and SeaweedFS.
#[path = "../support/mod.rs"]
mod support;

mod backends_file_changed;
mod damaged_state_file;
mod killed_daemon;
mod killed_s3fs;
mod racing_clients;
mod state_folder_unwritable;
mod store_down;

use support::*;

/// Live s3fs processes of this daemon that mount `bucket` (s3fs's first argument).
fn s3fs_of_bucket(d: &Daemon, bucket: &str) -> Vec<i32> {
    d.s3fs_pids()
        .into_iter()
        .filter(|p| cmdline(*p).get(1).map(|b| b == bucket).unwrap_or(false))
        .collect()
}

/// The daemon's log lines that contain `needle`.
fn lines_matching(d: &Daemon, needle: &str) -> Vec<String> {
    d.logs()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
