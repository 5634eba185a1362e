//! Tuning sweeps: other bai-s3 volume options on the data path (`BAI_S3_BENCH_TUNE`, or a
//! built-in list when the default tuning misses a data-path goal) and on the small files
//! (`BAI_S3_BENCH_TUNE_SMALL`, or a built-in list when they miss theirs).

use bytes::Bytes;

use crate::files::fill_random;
use crate::rig::{bucket, Bai, Env};
use crate::seq::{seq_file, DataPath, Seq};
use crate::small::{small_files, Small, SmallFiles};
use crate::stats::MIB;
use crate::{say, Res, Sizes};

/// One option set on the data path.
pub struct SeqTune {
    pub options: String,
    pub seq: Seq,
}

/// One option set on the small files.
pub struct SmallTune {
    pub options: String,
    pub small: Small,
}

/// The option sets in `var` (`;` between sets), or `fallback` when there are none and `missed`.
fn sets(var: &str, missed: bool, fallback: &[&str]) -> Vec<String> {
    let env = std::env::var(var).unwrap_or_default();
    let mut sets: Vec<String> = env
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if sets.is_empty() && missed {
        sets = fallback.iter().map(|s| s.to_string()).collect();
    }
    sets
}

/// Tuning sweep: the volume options that reach the data-path goals.
pub fn data_path(bai: &mut Bai, data: &Bytes, dp: &DataPath) -> Res<Vec<SeqTune>> {
    let sets = sets(
        "BAI_S3_BENCH_TUNE",
        !(dp.write_ok() && dp.read_ok()),
        &[
            "parallel-count=16",
            "parallel-count=32",
            "multipart-size=8",
            "parallel-count=16,multipart-size=8",
            "multipart-size=64",
            "cache=true",
        ],
    );
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        say(&format!("tuning: bai-s3 data path with {set}"));
        let mut o = bucket("bench-tune");
        o.extend(parse_set(set)?);
        let name = format!("tune-{i}");
        bai.p.create(&name, &o)?;
        let m = bai.p.mount(&name, "t")?;
        let s = seq_file(&m, &format!("big-{i}.bin"), data);
        bai.p.unmount(&name, "t")?;
        bai.p.remove(&name)?;
        out.push(SeqTune {
            options: set.clone(),
            seq: s?,
        });
    }
    Ok(out)
}

/// The same for the small files, when they miss their goal.
pub fn small(env: &Env, bai: &mut Bai, sm: &SmallFiles, sz: &Sizes) -> Res<Vec<SmallTune>> {
    let sets = sets(
        "BAI_S3_BENCH_TUNE_SMALL",
        sm.ratio() > 1.0,
        &[
            "compat-dir=false",
            "cache=true",
            "stat-cache-expire=300",
            // The defaults before bounded staleness (issue 18), to show what freshness costs.
            "stat-cache-expire=30,negative-cache=true",
        ],
    );
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        say(&format!("tuning: bai-s3 small files with {set}"));
        let b = format!("bench-small-t{i}");
        env.s3.create_bucket(&b)?;
        env.s3.put(&b, "warm-up", &fill_random(MIB))?;
        let mut o = bucket(&b);
        o.extend(parse_set(set)?);
        let name = format!("small-t{i}");
        bai.p.create(&name, &o)?;
        let m = bai.p.mount(&name, "t")?;
        let r = small_files(&m, sz.small, sz.cap);
        bai.p.unmount(&name, "t")?;
        bai.p.remove(&name)?;
        out.push(SmallTune {
            options: set.clone(),
            small: r?,
        });
    }
    Ok(out)
}

/// `k=v,k=v` into volume options (tuning keys only).
fn parse_set(set: &str) -> Res<Vec<(&'static str, String)>> {
    let mut o = Vec::new();
    for kv in set.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad option set entry {kv:?}"))?;
        let k = ALLOWED
            .iter()
            .find(|a| **a == k.trim())
            .ok_or_else(|| format!("unknown option {k}"))?;
        o.push((*k, v.trim().to_string()));
    }
    Ok(o)
}

const ALLOWED: &[&str] = &[
    "cache",
    "parallel-count",
    "multipart-size",
    "stat-cache-expire",
    "negative-cache",
    "compat-dir",
    "ro",
    "uid",
    "gid",
    "umask",
];
