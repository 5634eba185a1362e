//! File-system helpers the scenarios share: listing a folder, dropping the page cache, and
//! deterministic data to write.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use crate::Res;

pub fn list_dir(p: &Path) -> Res<usize> {
    Ok(fs::read_dir(p)
        .map_err(|e| format!("readdir {}: {e}", p.display()))?
        .count())
}

pub fn drop_caches() -> bool {
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

pub fn fill_random(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ n as u64;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}
