//! Containment against the real `bai-s3 serve`, real s3fs and a real SeaweedFS: what a bucket
//! holds, what a setting says and what a container writes never reaches the host, and what a
//! runtime does to a bind of a read-only volume never makes it writable. One module a scenario:
//!
//! - `links_out_of_the_bucket`: symbolic links planted through a mount or put as objects;
//! - `read_only_volumes`: read-only prefixes, binds remounted by a runtime, older versions' binds;
//! - `local_users`: folders open to local users, a local user at a mounted volume;
//! - `huge_write`: a file bigger than the state folder's disk;
//! - `backend_settings`: endpoints with user info, backends alike but for field boundaries;
//! - `restore_sweep`: the sweep at start and mounts that are not bai-s3's.
#[path = "../support/mod.rs"]
mod support;

mod backend_settings;
mod huge_write;
mod links_out_of_the_bucket;
mod local_users;
mod read_only_volumes;
mod restore_sweep;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

/// The host's mount table as this test sees it, for "nothing new was mounted": every mount but
/// those of the other tests' daemons (which run in parallel, each in its own temporary folder).
fn table(d: &Daemon) -> Vec<String> {
    mountinfo()
        .iter()
        .filter(|m| {
            m.mount_point.starts_with(&d.dir)
                || !m
                    .mount_point
                    .to_string_lossy()
                    .starts_with(&format!("/tmp/{TEST_DIR_PREFIX}"))
        })
        .map(|m| format!("{} {}", m.mount_point.display(), m.fs_type))
        .collect()
}

/// The permission bits of `p` itself (a link's own, not its target's).
fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}
