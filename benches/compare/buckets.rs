//! Buckets: N distinct buckets mounted at once (one volume and one ID each), bai-s3 (one s3fs
//! per bucket) against rclone (one process); and what s3fs's own settings do to its memory.
//!
//! At each N, fresh daemons: the time to mount all N (one after another on one connection, each
//! listed); PSS (`/proc/PID/smaps_rollup`: shared pages split among the processes that map
//! them, so shared libraries are not counted once per s3fs as RSS does) of the daemon and its
//! s3fs, in all and per bucket; the daemon's file descriptors and threads; its CPU while idle
//! (utime + stime over a few seconds, with the health check running every `HEALTH` seconds so
//! that its rounds over N mounts are in the window); then hot Mount, Get and List, and cold
//! Mounts of further buckets, with N mounted.
//!
//! The knobs: `KNOB_S3FS` bare s3fs at once, on as many buckets, with the daemon's default
//! options and one s3fs setting (or environment, or stack limit) changed at a time: PSS and
//! private memory per s3fs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use serde_json::json;

use crate::client::Plugin;
use crate::cold::cold_mount;
use crate::files::list_dir;
use crate::hot::hot_mounts;
use crate::procs::{self, exited, stop_pid};
use crate::rig::{bucket, remote, start_bai, start_rclone, stop_rclone, tail, Env};
use crate::stats::{ms, pct};
use crate::{say, Res, Sizes};

/// Seconds between health checks of the daemons measured here (`--health-interval`).
pub const HEALTH: u64 = 2;
/// Seconds the idle CPU is measured over.
pub const IDLE_SECS: u64 = 6;
/// Bare s3fs per knob.
pub const KNOB_S3FS: usize = 10;

/// Memory of a set of processes, in KiB.
#[derive(Default, Clone, Copy)]
pub struct Mem {
    pub pss: u64,
    /// Private_Clean + Private_Dirty: what each process costs by itself.
    pub private: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            pss: self.pss + o.pss,
            private: self.private + o.private,
        }
    }
}

/// `/proc/PID/smaps_rollup` of `pid`; zero when it is gone.
pub fn mem_of(pid: i32) -> Mem {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        pss: kib("Pss:"),
        private: kib("Private_Clean:") + kib("Private_Dirty:"),
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces, closed by the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// CPU of `pids` together over `secs`, in % of one core.
fn idle_cpu(pids: &[i32], secs: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as f64;
    let sum = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let before = sum();
    std::thread::sleep(Duration::from_secs(secs));
    (sum() - before) as f64 / hz / secs as f64 * 100.0
}

fn count_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn threads(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One plugin at one N.
pub struct Side {
    /// The daemon and everything it runs (bai-s3: its s3fs).
    pub mem: Mem,
    pub daemon: Mem,
    pub processes: usize,
    pub mount_all: Duration,
    /// Latencies, sorted.
    pub cold: Vec<Duration>,
    pub hot: Vec<Duration>,
    pub get: Vec<Duration>,
    pub list: Vec<Duration>,
    /// % of one core: the daemon, and the daemon with its s3fs.
    pub cpu_daemon: f64,
    pub cpu_all: f64,
    pub fds: usize,
    pub threads: usize,
    /// What went wrong after the memory was measured (the latencies after it are missing).
    pub note: Option<String>,
}

pub struct At {
    pub n: usize,
    pub bai: Side,
    pub rclone: Side,
}

/// One s3fs setting tried on bare s3fs.
pub struct Knob {
    pub name: &'static str,
    /// Per s3fs, averaged.
    pub mem: Mem,
    /// Why it could not be measured (s3fs refused it).
    pub failed: Option<String>,
}

pub struct Buckets {
    pub at: Vec<At>,
    pub cold_runs: usize,
    pub hot: usize,
    pub knobs: Vec<Knob>,
}

/// The buckets of the scenario, made once for the largest N (and the cold Mounts' extra ones).
fn bucket_name(i: usize) -> String {
    format!("bench-bk-{i:04}")
}

pub fn sizes(sz: &Sizes) -> Vec<usize> {
    if let Ok(v) = std::env::var("BAI_S3_BENCH_BUCKETS") {
        // Only the s3fs settings.
        if v == "knobs" {
            return Vec::new();
        }
        let mine: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        if !mine.is_empty() {
            return mine;
        }
    }
    if sz.quick {
        vec![20, 100]
    } else {
        vec![100, 300, 1000]
    }
}

pub fn run(env: &Env, sz: &Sizes) -> Res<Buckets> {
    let sizes = sizes(sz);
    let cold_runs = if sz.quick { 10 } else { 20 };
    let hot = sz.hot;
    let most = sizes.iter().copied().max().unwrap_or(0);
    say(&format!(
        "buckets: {sizes:?} distinct buckets mounted at once; making {} buckets",
        most + cold_runs
    ));
    for i in 0..most + cold_runs {
        env.s3.create_bucket(&bucket_name(i))?;
    }
    let knobs = knobs(env)?;
    let mut at = Vec::new();
    for &n in &sizes {
        at.push(at_n(env, n, most, cold_runs, hot)?);
    }
    Ok(Buckets {
        at,
        cold_runs,
        hot,
        knobs,
    })
}

/// The measures with `n` buckets mounted; the cold Mounts use buckets `extra`.. (never mounted).
fn at_n(env: &Env, n: usize, extra: usize, cold_runs: usize, hot: usize) -> Res<At> {
    let health = HEALTH.to_string();
    let tag = format!("bai-bk{n}");
    let mut b = start_bai(env, &tag, &["--health-interval", &health])?;
    let rtag = format!("rclone-bk{n}");
    let mut r = start_rclone(env, &rtag)?;
    let bai = (|| {
        let pid = b.pid as i32;
        let mount_all = mount_all(&mut b.p, n, &bucket)?;
        std::thread::sleep(Duration::from_secs(1));
        let s3fs = b.s3fs();
        if s3fs.len() != n {
            return Err(format!("bai-s3: {} s3fs for {n} buckets", s3fs.len()));
        }
        let daemon = mem_of(pid);
        let mem = s3fs.iter().fold(daemon, |m, p| m + mem_of(*p));
        let cpu_daemon = idle_cpu(&[pid], IDLE_SECS);
        let mut all = s3fs.clone();
        all.push(pid);
        let cpu_all = idle_cpu(&all, IDLE_SECS);
        let (fds, thr) = (count_fds(pid), threads(pid));
        let (hot_l, get, list) = calls(&mut b.p, n, hot)?;
        let cold = colds(&mut b.p, extra, cold_runs, &bucket)?;
        unmount_all(&mut b.p, n)?;
        Ok(Side {
            mem,
            daemon,
            processes: s3fs.len() + 1,
            mount_all,
            cold,
            hot: hot_l,
            get,
            list,
            cpu_daemon,
            cpu_all,
            fds,
            threads: thr,
            note: None,
        })
    })();
    b.stop();
    let bai = bai?;
    // rclone's serve docker can deadlock in an Unmount (seen at 100 volumes with 1.75.2): a call
    // that does not answer in time ends rclone's part; what was measured before is kept.
    r.p.set_timeout(Duration::from_secs(60));
    let rclone = (|| {
        let pid = r.pid as i32;
        let mount_all = mount_all(&mut r.p, n, &remote)?;
        std::thread::sleep(Duration::from_secs(1));
        let mem = mem_of(pid);
        let cpu = idle_cpu(&[pid], IDLE_SECS);
        let (fds, thr) = (count_fds(pid), threads(pid));
        let mut side = Side {
            mem,
            daemon: mem,
            processes: 1,
            mount_all,
            cold: Vec::new(),
            hot: Vec::new(),
            get: Vec::new(),
            list: Vec::new(),
            cpu_daemon: cpu,
            cpu_all: cpu,
            fds,
            threads: thr,
            note: None,
        };
        let rest = (|| {
            (side.hot, side.get, side.list) = calls(&mut r.p, n, hot)?;
            side.cold = colds(&mut r.p, extra, cold_runs, &remote)?;
            unmount_all(&mut r.p, n)
        })();
        if let Err(e) = rest {
            say(&format!("buckets {n}: rclone stopped answering: {e}"));
            side.note = Some(format!("rclone stopped answering ({e})"));
        }
        Ok::<_, String>(side)
    })();
    stop_rclone(r, env, &rtag);
    let rclone = rclone?;
    let per = |s: &Side| s.mem.pss as f64 / 1024.0 / n as f64;
    say(&format!(
        "buckets {n}: PSS bai-s3 {:.1} MiB ({:.2} per bucket; daemon {:.1}), rclone {:.1} MiB ({:.2}); mount all {:.1} / {:.1} s; idle CPU daemon {:.2} % (with s3fs {:.2} %) / {:.2} %; daemon fds {} threads {}",
        bai.mem.pss as f64 / 1024.0,
        per(&bai),
        bai.daemon.pss as f64 / 1024.0,
        rclone.mem.pss as f64 / 1024.0,
        per(&rclone),
        bai.mount_all.as_secs_f64(),
        rclone.mount_all.as_secs_f64(),
        bai.cpu_daemon,
        bai.cpu_all,
        rclone.cpu_daemon,
        bai.fds,
        bai.threads
    ));
    Ok(At { n, bai, rclone })
}

/// Create and Mount `bk-0000`.. on buckets 0..n, one after another, each listed; the time of all.
fn mount_all(
    p: &mut Plugin,
    n: usize,
    opts: &dyn Fn(&str) -> Vec<(&'static str, String)>,
) -> Res<Duration> {
    for i in 0..n {
        p.create(&format!("bk-{i:04}"), &opts(&bucket_name(i)))?;
    }
    let t = Instant::now();
    for i in 0..n {
        let mp = p.mount(&format!("bk-{i:04}"), "c1")?;
        list_dir(&mp)?;
    }
    Ok(t.elapsed())
}

fn unmount_all(p: &mut Plugin, n: usize) -> Res<()> {
    for i in 0..n {
        p.unmount(&format!("bk-{i:04}"), "c1")?;
        p.remove(&format!("bk-{i:04}"))?;
    }
    Ok(())
}

/// Hot Mounts of one mounted volume, 200 Gets of mounted volumes, 30 Lists: sorted latencies.
fn calls(
    p: &mut Plugin,
    n: usize,
    hot: usize,
) -> Res<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let h = hot_mounts(p, "bk-0000", hot)?;
    let mut gets = Vec::new();
    for i in 0..200 {
        let body = json!({"Name": format!("bk-{:04}", (i * 7) % n)}).to_string();
        gets.push(p.timed("VolumeDriver.Get", &body)?.0);
    }
    gets.sort();
    let mut lists = Vec::new();
    for _ in 0..30 {
        lists.push(p.timed("VolumeDriver.List", "{}")?.0);
    }
    lists.sort();
    Ok((h, gets, lists))
}

/// Cold Mounts, each of its own bucket (`extra`..), with the others mounted: Mount reply + root
/// listed, sorted.
fn colds(
    p: &mut Plugin,
    extra: usize,
    runs: usize,
    opts: &dyn Fn(&str) -> Vec<(&'static str, String)>,
) -> Res<Vec<Duration>> {
    let mut v = Vec::new();
    for i in 0..runs {
        let b = bucket_name(extra + i);
        v.push(cold_mount(p, &format!("bk-cold-{i}"), &opts(&b))?.1);
    }
    v.sort();
    Ok(v)
}

/// The knobs tried: a name, extra `-o` options, environment, and RLIMIT_STACK in KiB.
type KnobSpec = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u64,
);

const KNOBS: &[KnobSpec] = &[
    ("the daemon's options", "", &[], 0),
    (
        "max_stat_cache_size=1000",
        "max_stat_cache_size=1000",
        &[],
        0,
    ),
    ("multireq_max=4", "multireq_max=4", &[], 0),
    ("parallel_count=2", "parallel_count=2", &[], 0),
    ("max_thread_count=1", "max_thread_count=1", &[], 0),
    ("MALLOC_ARENA_MAX=1", "", &[("MALLOC_ARENA_MAX", "1")], 0),
    ("MALLOC_ARENA_MAX=2", "", &[("MALLOC_ARENA_MAX", "2")], 0),
    ("stack limit 256 KiB (thread stacks)", "", &[], 256),
    ("no MIME types (mime=/dev/null)", "mime=/dev/null", &[], 0),
    (
        "heap trimmed (MALLOC_TRIM_THRESHOLD_=0, MALLOC_TOP_PAD_=0)",
        "",
        &[("MALLOC_TRIM_THRESHOLD_", "0"), ("MALLOC_TOP_PAD_", "0")],
        0,
    ),
    (
        "all of: MALLOC_ARENA_MAX=1, heap trimmed, multireq_max=4, max_stat_cache_size=1000",
        "multireq_max=4,max_stat_cache_size=1000",
        &[
            ("MALLOC_ARENA_MAX", "1"),
            ("MALLOC_TRIM_THRESHOLD_", "0"),
            ("MALLOC_TOP_PAD_", "0"),
        ],
        0,
    ),
];

/// The daemon's default s3fs options for a bucket (`s3fs_args` with the default tuning; the
/// log, staging and disk-free settings left out: they cost no memory).
fn base_options(env: &Env) -> String {
    format!(
        "url={},endpoint=us-east-1,allow_other,use_path_request_style,parallel_count=8,multipart_size=16,stat_cache_expire=30,enable_noobj_cache,retries=2,connect_timeout=5,dbglevel=warn",
        env.s3srv.endpoint
    )
}

fn knobs(env: &Env) -> Res<Vec<Knob>> {
    say(&format!(
        "buckets: s3fs settings, {KNOB_S3FS} bare s3fs each"
    ));
    let mut out = Vec::new();
    for (k, (name, opts, vars, stack)) in KNOBS.iter().enumerate() {
        let r = knob(env, k, opts, vars, *stack);
        match r {
            Ok(mem) => {
                say(&format!(
                    "knob {name}: PSS {:.2} MiB, private {:.2} MiB per s3fs",
                    mem.pss as f64 / 1024.0,
                    mem.private as f64 / 1024.0
                ));
                out.push(Knob {
                    name,
                    mem,
                    failed: None,
                });
            }
            Err(e) => {
                say(&format!("knob {name}: {e}"));
                out.push(Knob {
                    name,
                    mem: Mem::default(),
                    failed: Some(e),
                });
            }
        }
    }
    Ok(out)
}

/// `KNOB_S3FS` bare s3fs with `opts`, `vars` and a stack limit, all mounted and listed; their
/// mean memory.
fn knob(env: &Env, k: usize, opts: &str, vars: &[(&str, &str)], stack_kib: u64) -> Res<Mem> {
    let root = env.work.join("knobs").join(k.to_string());
    let mut started: Vec<(u32, PathBuf)> = Vec::new();
    let r = (|| {
        for i in 0..KNOB_S3FS {
            let dir = root.join(i.to_string());
            fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut o = base_options(env);
            if !opts.is_empty() {
                o.push(',');
                o.push_str(opts);
            }
            let mut cmd = Command::new("s3fs");
            cmd.arg(bucket_name(i)).arg(&dir).args(["-f", "-o", &o]);
            if stack_kib > 0 {
                let bytes = stack_kib * 1024;
                // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let lim = nix::libc::rlimit {
                            rlim_cur: bytes,
                            rlim_max: bytes,
                        };
                        if nix::libc::setrlimit(nix::libc::RLIMIT_STACK, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let mut all_vars = vec![
                ("AWSACCESSKEYID", env.s3srv.access_key.as_str()),
                ("AWSSECRETACCESSKEY", env.s3srv.secret_key.as_str()),
            ];
            all_vars.extend_from_slice(vars);
            let log = dir.with_extension("log");
            let pid = procs::spawn("s3fs-knob", &mut cmd, &log, &all_vars)?;
            started.push((pid, dir.clone()));
            wait_mounted(pid, &dir, &log)?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let sum = started
            .iter()
            .fold(Mem::default(), |m, (p, _)| m + mem_of(*p as i32));
        Ok(Mem {
            pss: sum.pss / KNOB_S3FS as u64,
            private: sum.private / KNOB_S3FS as u64,
        })
    })();
    for (pid, dir) in started {
        let _ = umount2(&dir, MntFlags::empty()).or_else(|_| umount2(&dir, MntFlags::MNT_DETACH));
        stop_pid(pid, Duration::from_secs(5));
    }
    r
}

/// Until `dir` is a new mount that lists, or s3fs exits (its log says why).
fn wait_mounted(pid: u32, dir: &Path, log: &Path) -> Res<()> {
    let parent = fs::metadata(dir.parent().expect("parent"))
        .map_err(|e| e.to_string())?
        .dev();
    let t = Instant::now();
    loop {
        if fs::metadata(dir)
            .map(|m| m.dev() != parent)
            .unwrap_or(false)
            && list_dir(dir).is_ok()
        {
            return Ok(());
        }
        if exited(pid) {
            return Err(format!(
                "s3fs exited: {}",
                tail(log, 3).replace('\n', " / ")
            ));
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("s3fs not ready in 30 s: {}", tail(log, 3)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// p50 and p99 in ms (NaN when nothing was measured).
pub fn p50_p99(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (ms(pct(v, 0.5)), ms(pct(v, 0.99)))
}
