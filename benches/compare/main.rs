//! `make bench` (`cargo bench --bench compare`): bai-s3 side by side with `rclone serve docker`
//! on one real S3 server (SeaweedFS), both driven over their unix sockets with the requests
//! dockerd sends. Prints a markdown table with ratios and goals, and writes
//! `target/bench/compare.json`.
//!
//! `BAI_S3_BENCH_QUICK=1`: 128 MiB file, 1000 small files, 200 hot Mounts (a few minutes).
//! `BAI_S3_BENCH_ONLY=scale`, `=small` or `=buckets`: only that scenario (small: with its
//! tuning sweep). `BAI_S3_BENCH_BUCKETS=1000`: the numbers of buckets of the buckets section
//! (default 100, 300, 1000; quick 20, 100; `knobs`: only its s3fs settings).
//! `BAI_S3_BENCH_TUNE="parallel-count=16,multipart-size=32;cache=true"`: extra bai-s3 volume
//! option sets to measure on the data path (`;` between sets); without it, a built-in list is
//! tried when the default tuning misses a data-path goal.
//!
//! Everything it starts (SeaweedFS, bai-s3, rclone, s3fs, mounts, temp dirs) is removed at the
//! end, on failure, on a panic and on SIGINT/SIGTERM/SIGHUP.
//!
//! Each scenario is a module that returns a typed result; `report` renders them all (table,
//! JSON, goals). SeaweedFS, the S3 client, the backends file and the `bai-s3 serve` command
//! come from the integration tests' support (`tests/support`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../tests/support/mod.rs"]
mod support;

mod buckets;
mod churn;
mod client;
mod cold;
mod fan;
mod files;
mod hot;
mod machine;
mod memory;
mod procs;
mod report;
mod rig;
mod s3;
mod scale;
mod seq;
mod small;
mod stats;
mod tuning;

use rig::{start_bai, start_rclone, stop_rclone, Env};
use stats::MIB;

type Res<T> = Result<T, String>;

/// A progress line on stderr, with the time since the start.
fn say(msg: &str) {
    eprintln!("[bench {:>7.1}s] {msg}", started().elapsed().as_secs_f64());
}

fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

pub struct Sizes {
    pub quick: bool,
    /// Bytes of the data path's file.
    pub file: usize,
    pub small: usize,
    pub hot: usize,
    /// Longest a small-files phase runs before it is extrapolated.
    pub cap: Duration,
}

fn main() {
    started();
    procs::handle_signals();
    let quick = std::env::var("BAI_S3_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let sizes = if quick {
        Sizes {
            quick,
            file: 128 * MIB,
            small: 1000,
            hot: 200,
            cap: Duration::from_secs(60),
        }
    } else {
        Sizes {
            quick,
            file: 1024 * MIB,
            small: 10_000,
            hot: 1000,
            cap: Duration::from_secs(180),
        }
    };
    let guard = procs::CleanupOnDrop;
    let r = run(&sizes);
    drop(guard);
    if let Err(e) = r {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(sz: &Sizes) -> Res<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err(
            "the bench mounts FUSE file systems and drops the page cache: run it as root".into(),
        );
    }
    let rclone = rig::rclone_bin();
    for prog in [Path::new("s3fs"), rclone.as_path()] {
        if Command::new(prog).arg("--version").output().is_err() {
            let prog = prog.display();
            return Err(format!(
                "{prog} is not installed: run scripts/deps.sh bench"
            ));
        }
    }
    let work = procs::make_work()?;
    let report = report::Report::header(sz, &machine::Machine::collect());
    eprintln!("{}", report.markdown);
    let env = Env::start(&work)?;
    let only = std::env::var("BAI_S3_BENCH_ONLY").unwrap_or_default();
    if only == "scale" {
        let sc = scale::run(&env, sz)?;
        return report.scale_only(&sc).write();
    }
    if only == "small" {
        say("starting bai-s3 and rclone serve docker");
        let mut bai = start_bai(&env, "bai", &[])?;
        let mut rc = start_rclone(&env, "rclone")?;
        let small = small::run(&mut bai, &mut rc, sz)?;
        let tune = tuning::small(&env, &mut bai, &small, sz)?;
        stop_rclone(rc, &env, "rclone");
        bai.stop();
        return report.small_only(sz, &small, &tune).write();
    }
    if only == "buckets" {
        let bk = buckets::run(&env, sz)?;
        return report.buckets_only(&bk).write();
    }

    say("starting bai-s3 and rclone serve docker");
    let mut bai = start_bai(&env, "bai", &[])?;
    let mut rc = start_rclone(&env, "rclone")?;
    let hot = hot::run(&mut bai, &mut rc, sz.hot)?;
    let cold = cold::run(&env, &mut bai, &mut rc)?;
    let fan = fan::run(&mut bai, &mut rc)?;
    let (churn, mut rc) = churn::run(&env, &mut bai, rc)?;
    let memory = memory::run(&env)?;
    let (data_path, data) = seq::run(&env, &mut bai, &mut rc, sz)?;
    let small = small::run(&mut bai, &mut rc, sz)?;
    let tune_data = tuning::data_path(&mut bai, &data, &data_path)?;
    let tune_small = tuning::small(&env, &mut bai, &small, sz)?;
    // Under its first tag even when churn restarted it (the clean-up takes the rest).
    stop_rclone(rc, &env, "rclone");
    bai.stop();
    let scale = scale::run(&env, sz)?;
    let buckets = buckets::run(&env, sz)?;

    let results = report::Results {
        hot,
        cold,
        fan,
        churn,
        memory,
        data: data_path,
        small,
        tune_data,
        tune_small,
        scale,
        buckets,
    };
    report.full(sz, &results).write()
}
