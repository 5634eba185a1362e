//! The daemon's two folders, spelled out once.
//!
//! The state folder (`--state-dir`, private to root) holds the store, the logs and s3fs's disk
//! space; the mount root (`--mount-root`, reachable by root only) holds one folder per volume
//! and, under [`SHARED_DIR`], the shared s3fs mounts. Every module that makes or reads one of
//! these names takes it from here, so the start-up checks (which refuse a mount root that
//! overlaps the state folder's entries) and the code that writes them cannot drift apart.

use std::path::{Path, PathBuf};

/// Folder under the mount root that holds the shared s3fs mounts.
pub const SHARED_DIR: &str = ".s3fs";

/// s3fs's own logs, one file per shared mount.
pub const LOGS: &str = "logs";
/// s3fs's local cache (`use_cache`), one folder per shared mount that asks for it.
pub const CACHE: &str = "cache";
/// Private mount points where a prefix is resolved before it is bound into place.
pub const STAGE: &str = "stage";
/// Where s3fs stages open files, on the state folder's disk and never the host's `/tmp`.
pub const TMP: &str = "tmp";
/// The folders made in the state folder at start.
pub const STATE_SUBDIRS: [&str; 4] = [LOGS, CACHE, STAGE, TMP];

/// The store's database (SQLite; `-wal` and `-shm` beside it).
pub const DB_FILE: &str = "state.db";
/// The state file of bai-s3 before the database (imported once, then renamed aside).
pub const LEGACY_FILE: &str = "volumes.json";
/// The file whose `flock` makes one daemon per state folder.
pub const LOCK_FILE: &str = "lock";
/// The key that names shared mounts.
pub const NAME_KEY_FILE: &str = "shared-names.key";

/// Every name the daemon keeps in its state folder, and the names its store's files start
/// with: a mount root inside the state folder must not be one of them.
pub const STATE_ENTRIES: &[&str] = &[
    LOGS,
    CACHE,
    STAGE,
    TMP,
    LOCK_FILE,
    DB_FILE,
    LEGACY_FILE,
    NAME_KEY_FILE,
];

/// Where the shared s3fs mounts live under `mount_root`.
pub fn shared_root(mount_root: &Path) -> PathBuf {
    mount_root.join(SHARED_DIR)
}

/// The log file of the shared mount `name`.
pub fn log_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(LOGS).join(format!("{name}.log"))
}
