//! Memory: fresh daemons with 500 volumes registered and 20 prefixes of one bucket mounted;
//! the resident memory of bai-s3 (daemon and its s3fs) and of rclone.

use std::time::Duration;

use crate::files::list_dir;
use crate::rig::{bucket, remote, rss_kib, start_bai, start_rclone, stop_rclone, Env, MEM_MOUNTED};
use crate::{say, Res};

pub const VOLUMES: usize = 500;

/// Resident memory in KiB.
pub struct Memory {
    /// The daemon and every s3fs it runs.
    pub bai_total: u64,
    pub bai_daemon: u64,
    pub s3fs: usize,
    /// The daemon just started.
    pub bai_idle: u64,
    pub rclone: u64,
    pub rclone_idle: u64,
}

impl Memory {
    pub fn ratio(&self) -> f64 {
        self.bai_total as f64 / self.rclone as f64
    }
}

pub fn run(env: &Env) -> Res<Memory> {
    say("memory: 500 volumes registered, 20 prefixes of one bucket mounted (fresh daemons)");
    let mut mb = start_bai(env, "bai-mem", &[])?;
    let mut mr = start_rclone(env, "rclone-mem")?;
    let (base_b, base_r) = (rss_kib(mb.pid as i32), rss_kib(mr.pid as i32));
    for i in 0..VOLUMES {
        let name = format!("vol-{i:03}");
        if i < MEM_MOUNTED {
            let mut o = bucket("bench-mem");
            o.push(("prefix", format!("vf/{i}")));
            mb.p.create(&name, &o)?;
            mr.p.create(&name, &remote(&format!("bench-mem/vf/{i}")))?;
        } else {
            mb.p.create(&name, &bucket("bench-mem"))?;
            mr.p.create(&name, &remote("bench-mem"))?;
        }
    }
    for i in 0..MEM_MOUNTED {
        let name = format!("vol-{i:03}");
        let m = mb.p.mount(&name, "c1")?;
        let n = list_dir(&m)?;
        if n != 1 {
            return Err(format!(
                "bai-s3 {name} at {}: {n} entries, expected 1 (seed)",
                m.display()
            ));
        }
        let m = mr.p.mount(&name, "c1")?;
        let n = list_dir(&m)?;
        if n != 1 {
            return Err(format!(
                "rclone {name} at {}: {n} entries, expected 1 (seed)",
                m.display()
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (mem_b, mem_n) = mb.rss_kib();
    let mem_r = rss_kib(mr.pid as i32);
    let mem_daemon = rss_kib(mb.pid as i32);
    say(&format!(
        "memory: bai-s3 {:.1} MiB ({mem_n} s3fs), rclone {:.1} MiB",
        mem_b as f64 / 1024.0,
        mem_r as f64 / 1024.0
    ));
    // Unmount first: the daemons then stop at once.
    for i in 0..MEM_MOUNTED {
        let name = format!("vol-{i:03}");
        mb.p.unmount(&name, "c1")?;
        mr.p.unmount(&name, "c1")?;
    }
    mb.stop();
    stop_rclone(mr, env, "rclone-mem");
    Ok(Memory {
        bai_total: mem_b,
        bai_daemon: mem_daemon,
        s3fs: mem_n,
        bai_idle: base_b,
        rclone: mem_r,
        rclone_idle: base_r,
    })
}
