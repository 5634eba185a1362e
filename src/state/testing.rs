//! What the store's unit tests share: records, listings, and the files as an operator sees them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{Store, VolumeRecord};
use crate::layout::DB_FILE;

/// A record of bucket `abc` held `n` times by `id` (no holder when `n` is 0).
pub fn rec(id: &str, n: u64) -> VolumeRecord {
    VolumeRecord {
        options: [("bucket".to_string(), "abc".to_string())].into(),
        created_at: "2026-11-25T00:00:00Z".into(),
        holders: if n > 0 {
            [(id.to_string(), n)].into()
        } else {
            BTreeMap::new()
        },
        shared: None,
    }
}

pub fn names(s: &Store) -> Vec<String> {
    s.records().into_keys().collect()
}

/// The files in `dir` whose names contain `part`, sorted.
pub fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(part))
        .collect();
    v.sort();
    v
}

/// A connection of its own to the database (as an operator's `sqlite3` would have).
pub fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE)).unwrap()
}

/// `volumes.json` exactly as bai-s3 before the database wrote it.
pub fn legacy_bytes(boot: &str, vols: &BTreeMap<String, VolumeRecord>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "version": 1, "boot_id": boot, "volumes": vols,
    }))
    .unwrap()
}

pub fn this_boot() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}
