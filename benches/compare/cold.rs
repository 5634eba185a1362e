//! Cold Mount: Create, Mount (s3fs start / FUSE ready) and a listing of the root, seven times
//! each for bai-s3, a bare s3fs started by hand, and rclone, on a bucket of 300 objects.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};

use crate::client::Plugin;
use crate::files::list_dir;
use crate::procs::{self, exited, stop_pid};
use crate::rig::{bucket, remote, tail, Bai, Env, Rclone};
use crate::stats::{median, ms};
use crate::{say, Res};

pub const RUNS: usize = 7;

/// The runs of one side, sorted, and their median.
pub struct Runs {
    pub all: Vec<Duration>,
    pub median: Duration,
}

impl Runs {
    fn of(mut all: Vec<Duration>) -> Runs {
        let median = median(&mut all);
        Runs { all, median }
    }
}

pub struct ColdMount {
    /// Mount request until the root is listed.
    pub bai: Runs,
    /// Mount request until its reply.
    pub bai_reply: Runs,
    /// Spawn until the mount point is a new mount and lists.
    pub bare: Runs,
    pub rclone: Runs,
    pub rclone_reply: Runs,
}

pub fn run(env: &Env, bai: &mut Bai, rc: &mut Rclone) -> Res<ColdMount> {
    say("cold Mount: 7 × bai-s3, bare s3fs, rclone");
    bai.wait_no_s3fs()?;
    let (mut cb, mut cs, mut cr) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        cb.push(cold_mount(
            &mut bai.p,
            &format!("cold-{i}"),
            &bucket("bench-cold"),
        )?);
        bai.wait_no_s3fs()?;
        cs.push(bare_s3fs_cold(
            env,
            "bench-cold",
            &env.work.join("bare").join(format!("m{i}")),
        )?);
        cr.push(cold_mount(
            &mut rc.p,
            &format!("cold-{i}"),
            &remote("bench-cold"),
        )?);
    }
    let r = ColdMount {
        bai: Runs::of(cb.iter().map(|x| x.1).collect()),
        bai_reply: Runs::of(cb.iter().map(|x| x.0).collect()),
        bare: Runs::of(cs),
        rclone: Runs::of(cr.iter().map(|x| x.1).collect()),
        rclone_reply: Runs::of(cr.iter().map(|x| x.0).collect()),
    };
    say(&format!(
        "cold Mount medians: bai-s3 {:.1} ms, bare s3fs {:.1} ms, rclone {:.1} ms",
        ms(r.bai.median),
        ms(r.bare.median),
        ms(r.rclone.median)
    ));
    Ok(r)
}

fn bare_s3fs_cold(env: &Env, bucket: &str, dir: &Path) -> Res<Duration> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let parent = fs::metadata(dir.parent().expect("parent"))
        .map_err(|e| e.to_string())?
        .dev();
    let mut cmd = Command::new("s3fs");
    cmd.arg(bucket).arg(dir).arg("-f").arg("-o").arg(format!(
        "url={},use_path_request_style,dbglevel=warn",
        env.s3srv.endpoint
    ));
    let log = dir.with_extension("log");
    let t = Instant::now();
    let pid = procs::spawn(
        "s3fs-bare",
        &mut cmd,
        &log,
        &[
            ("AWSACCESSKEYID", &env.s3srv.access_key),
            ("AWSSECRETACCESSKEY", &env.s3srv.secret_key),
        ],
    )?;
    let r = loop {
        if fs::metadata(dir)
            .map(|m| m.dev() != parent)
            .unwrap_or(false)
            && list_dir(dir).is_ok()
        {
            break Ok(t.elapsed());
        }
        if exited(pid) {
            break Err(format!("bare s3fs exited: {}", tail(&log, 5)));
        }
        if t.elapsed() > Duration::from_secs(30) {
            break Err(format!("bare s3fs not ready in 30 s: {}", tail(&log, 5)));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = umount2(dir, MntFlags::empty()).or_else(|_| umount2(dir, MntFlags::MNT_DETACH));
    stop_pid(pid, Duration::from_secs(5));
    r
}

/// Cold Mount: Create, Mount (s3fs start / FUSE ready), list the root. Unmount, Remove.
/// Returns (Mount reply, Mount reply + root listed).
pub fn cold_mount(p: &mut Plugin, vol: &str, opts: &[(&str, String)]) -> Res<(Duration, Duration)> {
    p.create(vol, opts)?;
    let t = Instant::now();
    let mp = p.mount(vol, "cold")?;
    let reply = t.elapsed();
    list_dir(&mp)?;
    let d = t.elapsed();
    p.unmount(vol, "cold")?;
    p.remove(vol)?;
    Ok((reply, d))
}
