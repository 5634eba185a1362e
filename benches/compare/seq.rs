//! Sequential data path: the raw S3 floor (multipart PUT, ranged GETs), then one large file
//! written and read back through a bai-s3 mount and through an rclone mount.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::files::{drop_caches, fill_random};
use crate::rig::{bucket, remote, Bai, Env, Rclone};
use crate::stats::{mibs, MIB};
use crate::{say, Res, Sizes};

/// Raw S3: part size and parts in flight.
pub const PART: usize = 16 * MIB;
pub const PARALLEL: usize = 8;

#[derive(Clone, Copy, Default)]
pub struct Seq {
    pub write: Duration,
    pub read: Duration,
}

pub struct DataPath {
    /// File size in bytes.
    pub file: usize,
    pub raw: Seq,
    /// The page cache could be dropped (before the mounts' reads).
    pub caches_dropped: bool,
    pub bai: Seq,
    pub rclone: Seq,
}

impl DataPath {
    pub fn mibs(&self, d: Duration) -> f64 {
        mibs(self.file, d)
    }
    /// Sequential write ≥ 50% of raw S3.
    pub fn write_ok(&self) -> bool {
        self.mibs(self.bai.write) >= 0.5 * self.mibs(self.raw.write)
    }
    /// Sequential read ≥ 70% of raw S3.
    pub fn read_ok(&self) -> bool {
        self.mibs(self.bai.read) >= 0.7 * self.mibs(self.raw.read)
    }
}

/// Returns the result and the file's bytes (the tuning sweep writes them again).
pub fn run(env: &Env, bai: &mut Bai, rc: &mut Rclone, sz: &Sizes) -> Res<(DataPath, Bytes)> {
    say(&format!(
        "data path: raw S3 floor, {} MiB multipart PUT / ranged GET",
        sz.file / MIB
    ));
    let data = fill_random(sz.file);
    let raw_w = env
        .raw
        .put_multipart("bench-raw", "big.bin", &data, PART, PARALLEL)?;
    // Like the reads through the mounts below, the raw read starts with a cold page cache
    // (SeaweedFS would otherwise serve the object it just stored from memory).
    drop_caches();
    let raw_r = env
        .raw
        .get_ranged("bench-raw", "big.bin", &data, PART, PARALLEL)?;
    let (raw_wm, raw_rm) = (mibs(sz.file, raw_w), mibs(sz.file, raw_r));
    say(&format!(
        "raw S3: write {raw_wm:.0} MiB/s, read {raw_rm:.0} MiB/s"
    ));
    let caches = drop_caches();

    say("data path: bai-s3 (default tuning)");
    bai.p.create("data", &bucket("bench-data"))?;
    let m = bai.p.mount("data", "d1")?;
    let sb = seq_file(&m, "big.bin", &data)?;
    bai.p.unmount("data", "d1")?;
    say(&format!(
        "bai-s3: write {:.0} MiB/s, read {:.0} MiB/s",
        mibs(sz.file, sb.write),
        mibs(sz.file, sb.read)
    ));
    say("data path: rclone (defaults)");
    rc.p.create("data", &remote("bench-data-rc"))?;
    let m = rc.p.mount("data", "d1")?;
    let sr = seq_file(&m, "big.bin", &data)?;
    rc.p.unmount("data", "d1")?;
    say(&format!(
        "rclone: write {:.0} MiB/s, read {:.0} MiB/s",
        mibs(sz.file, sr.write),
        mibs(sz.file, sr.read)
    ));
    let r = DataPath {
        file: sz.file,
        raw: Seq {
            write: raw_w,
            read: raw_r,
        },
        caches_dropped: caches,
        bai: sb,
        rclone: sr,
    };
    Ok((r, data))
}

/// Write `data` to `dir/name` with 1 MiB writes, fsync, close; drop the page cache; read it
/// back with 1 MiB reads and compare.
pub fn seq_file(dir: &Path, name: &str, data: &Bytes) -> Res<Seq> {
    let path = dir.join(name);
    let t = Instant::now();
    {
        let mut f =
            fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        for c in data.chunks(MIB) {
            f.write_all(c)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    }
    let write = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let mut f = fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; MIB];
    let mut at = 0usize;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if at + n > data.len() || buf[..n] != data[at..at + n] {
            return Err(format!("{}: wrong bytes at {at}", path.display()));
        }
        at += n;
    }
    let read = t.elapsed();
    if at != data.len() {
        return Err(format!(
            "{}: read {at} of {} bytes",
            path.display(),
            data.len()
        ));
    }
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(Seq { write, read })
}
