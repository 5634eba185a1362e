//! Small files: many 4 KiB files created, listed and read back through a mount, each phase
//! capped in time and then extrapolated; bai-s3 and rclone.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::files::{drop_caches, fill_random, list_dir};
use crate::rig::{bucket, remote, Bai, Rclone};
use crate::{say, Res, Sizes};

pub const BYTES_EACH: usize = 4096;

/// One phase: its time, the files it got through, and the files there were to do.
#[derive(Clone, Copy, Default)]
pub struct Phase {
    pub secs: f64,
    pub done: usize,
    pub total: usize,
}

impl Phase {
    /// Time for all `total` files, extrapolated when the phase was capped.
    pub fn full(&self) -> f64 {
        if self.done == 0 {
            f64::INFINITY
        } else {
            self.secs * self.total as f64 / self.done as f64
        }
    }
    pub fn capped(&self) -> bool {
        self.done < self.total
    }
}

#[derive(Clone, Copy, Default)]
pub struct Small {
    pub create: Phase,
    pub list: Phase,
    pub read: Phase,
}

impl Small {
    pub fn total(&self) -> f64 {
        self.create.full() + self.list.full() + self.read.full()
    }
}

/// Create `n` files of 4 KiB in `dir/small`, list the folder, read every file back. Each phase
/// stops at `cap` and is then extrapolated to `n` files.
pub fn small_files(dir: &Path, n: usize, cap: Duration) -> Res<Small> {
    let d = dir.join("small");
    fs::create_dir(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    let body = fill_random(BYTES_EACH);
    let mut s = Small::default();
    let t = Instant::now();
    let mut made = 0;
    for i in 0..n {
        fs::write(d.join(format!("f{i:05}")), &body).map_err(|e| format!("write f{i}: {e}"))?;
        made += 1;
        if t.elapsed() > cap {
            break;
        }
    }
    s.create = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: made,
        total: n,
    };
    drop_caches();
    let t = Instant::now();
    let listed = list_dir(&d)?;
    s.list = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: made,
        total: n,
    };
    if listed != made {
        return Err(format!("listed {listed} files, made {made}"));
    }
    drop_caches();
    let t = Instant::now();
    let mut read = 0;
    for i in 0..made {
        let got = fs::read(d.join(format!("f{i:05}"))).map_err(|e| format!("read f{i}: {e}"))?;
        if got != body[..] {
            return Err(format!("f{i:05}: wrong bytes"));
        }
        read += 1;
        if t.elapsed() > cap {
            break;
        }
    }
    s.read = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: read,
        total: n,
    };
    Ok(s)
}

pub struct SmallFiles {
    pub files: usize,
    pub cap: Duration,
    pub bai: Small,
    pub rclone: Small,
}

impl SmallFiles {
    /// bai-s3's total time over rclone's (the goal: ≤ 1).
    pub fn ratio(&self) -> f64 {
        self.bai.total() / self.rclone.total()
    }
}

pub fn run(bai: &mut Bai, rc: &mut Rclone, sz: &Sizes) -> Res<SmallFiles> {
    say(&format!("small files: {} × 4 KiB through bai-s3", sz.small));
    bai.p.create("small", &bucket("bench-small"))?;
    let m = bai.p.mount("small", "s1")?;
    let smb = small_files(&m, sz.small, sz.cap)?;
    bai.p.unmount("small", "s1")?;
    say(&format!("small files: {} × 4 KiB through rclone", sz.small));
    rc.p.create("small", &remote("bench-small-rc"))?;
    let m = rc.p.mount("small", "s1")?;
    let smr = small_files(&m, sz.small, sz.cap)?;
    rc.p.unmount("small", "s1")?;
    Ok(SmallFiles {
        files: sz.small,
        cap: sz.cap,
        bai: smb,
        rclone: smr,
    })
}
