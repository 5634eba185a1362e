//! Scale: the cost of a call with many registered volumes. One daemon, the registered volumes
//! grown by Creates over the socket; then the store's own cost of one change.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hot::hot_mounts;
use crate::rig::{rss_kib, start_bai, Env};
use crate::stats::{median, ms, pct, MIB};
use crate::{say, Res, Sizes};

/// The measures at one number of registered volumes.
pub struct At {
    pub volumes: usize,
    pub create_p50: Duration,
    pub creates_timed: usize,
    pub hot_p50: Duration,
    pub hot_p99: Duration,
    pub list_p50: Duration,
    pub list_p99: Duration,
    pub list_bytes: usize,
    pub get_p50: Duration,
    pub rss_kib: u64,
    pub store_bytes: u64,
}

/// One store change at the largest size, through the library; latencies sorted.
pub struct StoreChange {
    pub volumes: usize,
    pub not_durable: Vec<Duration>,
    pub durable: Vec<Duration>,
}

pub struct Scale {
    /// Hot Mounts per size.
    pub hot: usize,
    pub at: Vec<At>,
    pub store: StoreChange,
}

/// Bytes on disk of the store (database, log and shared-memory files).
fn store_bytes(state: &Path) -> u64 {
    fs::read_dir(state)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("state.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// One daemon, the registered volumes grown through 20, 1,000 and 10,000 (by Creates over the
/// socket); at each size: Create p50 (the last up to 200 Creates to reach it), hot Mount
/// p50/p99, List (time until the reply's bytes are in, and its size), Get, daemon RSS, and the
/// store's size on disk. Then the store's own cost of one change, durable or not, at the
/// largest size (through the library, on the same disk).
pub fn run(env: &Env, sz: &Sizes) -> Res<Scale> {
    let sizes: &[usize] = if sz.quick {
        &[20, 500, 2000]
    } else {
        &[20, 1000, 10_000]
    };
    let hot = sz.hot;
    say(&format!("scale: registered volumes {sizes:?}"));
    env.s3.create_bucket("bench-scale")?;
    let mut b = start_bai(env, "bai-scale", &[])?;
    let state = env.work.join("bai-scale/state");
    let bucket = vec![("bucket", "bench-scale".to_string())];
    b.p.create("scale-hot", &bucket)?;
    let mut registered = 1;
    let mut at = Vec::new();
    for &n in sizes {
        let mut creates = Vec::new();
        let t_all = Instant::now();
        while registered < n {
            let t = Instant::now();
            b.p.create(&format!("scale-{registered:05}"), &bucket)?;
            if n - registered <= 200 {
                creates.push(t.elapsed());
            }
            registered += 1;
        }
        let grow = t_all.elapsed();
        let c50 = median(&mut creates);
        let hm = hot_mounts(&mut b.p, "scale-hot", hot)?;
        let (h50, h99) = (pct(&hm, 0.5), pct(&hm, 0.99));
        let mut lists = Vec::new();
        let mut list_bytes = 0;
        for _ in 0..30 {
            let (d, bytes) = b.p.timed("VolumeDriver.List", "{}")?;
            lists.push(d);
            list_bytes = bytes;
        }
        lists.sort();
        let (l50, l99) = (pct(&lists, 0.5), pct(&lists, 0.99));
        let mut gets = Vec::new();
        for i in 0..200 {
            let body = json!({"Name": format!("scale-{:05}", 1 + i % (n - 1))}).to_string();
            gets.push(b.p.timed("VolumeDriver.Get", &body)?.0);
        }
        gets.sort();
        let g50 = pct(&gets, 0.5);
        let rss = rss_kib(b.pid as i32);
        let disk = store_bytes(&state);
        say(&format!(
            "scale {n}: Create p50 {:.2} ms, hot Mount p50 {:.3} / p99 {:.3} ms, List p50 {:.2} ms ({list_bytes} B), Get p50 {:.3} ms, RSS {:.1} MiB, store {:.1} MiB (grown in {:.1} s)",
            ms(c50), ms(h50), ms(h99), ms(l50), ms(g50), rss as f64 / 1024.0, disk as f64 / MIB as f64, grow.as_secs_f64()
        ));
        at.push(At {
            volumes: n,
            create_p50: c50,
            creates_timed: creates.len(),
            hot_p50: h50,
            hot_p99: h99,
            list_p50: l50,
            list_p99: l99,
            list_bytes,
            get_p50: g50,
            rss_kib: rss,
            store_bytes: disk,
        });
    }
    b.stop();

    // The store alone: one change, durable (fsync) or not, with the largest size registered.
    let n = sizes[sizes.len() - 1];
    let dir = env.work.join("store-cost");
    let (store, _) = bai_s3::state::Store::open(&dir).map_err(|e| e.to_string())?;
    let rec = |holders: u64| bai_s3::state::VolumeRecord {
        options: [("bucket".to_string(), "bench-scale".to_string())].into(),
        created_at: "2026-12-01T00:00:00Z".into(),
        holders: (0..holders).map(|i| (format!("{i:064x}"), 1)).collect(),
        shared: None,
    };
    for i in 0..n {
        store
            .update(&format!("scale-{i:05}"), Some(rec(0)), false)
            .map_err(|e| e.to_string())?;
    }
    let cost = |durable: bool, k: usize| -> Res<Vec<Duration>> {
        let mut v = Vec::new();
        for i in 0..k {
            let t = Instant::now();
            store
                .update("scale-00007", Some(rec(1 + (i % 3) as u64)), durable)
                .map_err(|e| e.to_string())?;
            v.push(t.elapsed());
        }
        v.sort();
        Ok(v)
    };
    let normal = cost(false, 2000)?;
    let full = cost(true, 300)?;
    drop(store);
    say(&format!(
        "store change at {n} volumes: not durable p50 {:.3} / p99 {:.3} ms, durable p50 {:.3} / p99 {:.3} ms",
        ms(pct(&normal, 0.5)), ms(pct(&normal, 0.99)), ms(pct(&full, 0.5)), ms(pct(&full, 0.99))
    ));
    Ok(Scale {
        hot,
        at,
        store: StoreChange {
            volumes: n,
            not_durable: normal,
            durable: full,
        },
    })
}
