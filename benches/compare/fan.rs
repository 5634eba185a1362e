//! Fan-in / fan-out: 64 concurrent first Mounts of one volume, one connection each, released at
//! once; then their 64 Unmounts.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::client::{mount_once, Plugin};
use crate::rig::{bucket, remote, Bai, Rclone};
use crate::stats::ms;
use crate::{say, Res};

pub const MOUNTS: usize = 64;

pub struct FanIn {
    pub bai_wall: Duration,
    pub bai_retries: u32,
    /// s3fs processes of bai-s3 alive after the Mounts.
    pub s3fs_live: usize,
    /// "s3fs mount ready" lines the Mounts added to bai-s3's log.
    pub s3fs_started: usize,
    pub rclone_wall: Duration,
    pub rclone_retries: u32,
}

pub fn run(bai: &mut Bai, rc: &mut Rclone) -> Res<FanIn> {
    say("fan-in: 64 concurrent first Mounts");
    bai.p.create("fan", &bucket("bench-cold"))?;
    rc.p.create("fan", &remote("bench-cold"))?;
    bai.wait_no_s3fs()?;
    let ready0 = bai.ready_lines();
    let (fb, fb_retries) = fan_in(&bai.p.sock, "fan", MOUNTS)?;
    let fan_live = bai.s3fs().len();
    let fan_started = bai.ready_lines() - ready0;
    let (fr, fr_retries) = fan_in(&rc.p.sock, "fan", MOUNTS)?;
    say(&format!(
        "fan-in: bai-s3 {:.1} ms ({fan_started} s3fs started, {fan_live} live), rclone {:.1} ms",
        ms(fb),
        ms(fr)
    ));
    fan_out(&mut bai.p, "fan", MOUNTS)?;
    fan_out(&mut rc.p, "fan", MOUNTS)?;
    bai.p.remove("fan")?;
    rc.p.remove("fan")?;
    Ok(FanIn {
        bai_wall: fb,
        bai_retries: fb_retries,
        s3fs_live: fan_live,
        s3fs_started: fan_started,
        rclone_wall: fr,
        rclone_retries: fr_retries,
    })
}

/// `n` concurrent first Mounts of `vol` on `n` connections; wall time and connect retries.
fn fan_in(sock: &Path, vol: &str, n: usize) -> Res<(Duration, u32)> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut hs = Vec::new();
    for i in 0..n {
        let (b, sock, vol) = (barrier.clone(), sock.to_path_buf(), vol.to_string());
        hs.push(std::thread::spawn(move || {
            b.wait();
            mount_once(&sock, &vol, &format!("fan-{i:02}"))
        }));
    }
    barrier.wait();
    let t = Instant::now();
    let mut retries = 0;
    let mut errs = Vec::new();
    for h in hs {
        match h.join().map_err(|_| "fan-in thread panicked".to_string())? {
            Ok(r) => retries += r,
            Err(e) => errs.push(e),
        }
    }
    let wall = t.elapsed();
    if !errs.is_empty() {
        return Err(format!(
            "{} of {n} Mounts failed, first: {}",
            errs.len(),
            errs[0]
        ));
    }
    Ok((wall, retries))
}

fn fan_out(p: &mut Plugin, vol: &str, n: usize) -> Res<()> {
    for i in 0..n {
        p.unmount(vol, &format!("fan-{i:02}"))?;
    }
    Ok(())
}
