//! Hot Mount: Mounts of an already-mounted volume, each with a new ID, on one kept-alive
//! connection, bai-s3 and rclone in turn.

use std::time::{Duration, Instant};

use crate::client::Plugin;
use crate::rig::{bucket, remote, Bai, Rclone};
use crate::stats::{ms, pct};
use crate::{say, Res};

pub struct HotMount {
    pub calls: usize,
    /// Latencies, sorted.
    pub bai: Vec<Duration>,
    pub rclone: Vec<Duration>,
}

impl HotMount {
    /// p50 and p99 of bai-s3 and of rclone, in ms.
    pub fn p50_p99(&self) -> (f64, f64, f64, f64) {
        (
            ms(pct(&self.bai, 0.5)),
            ms(pct(&self.bai, 0.99)),
            ms(pct(&self.rclone, 0.5)),
            ms(pct(&self.rclone, 0.99)),
        )
    }
}

pub fn run(bai: &mut Bai, rc: &mut Rclone, n: usize) -> Res<HotMount> {
    say(&format!("hot Mount: {n} Mounts of a mounted volume"));
    bai.p.create("hot", &bucket("bench-hot"))?;
    rc.p.create("hot", &remote("bench-hot"))?;
    let hb = hot_mounts(&mut bai.p, "hot", n)?;
    let hr = hot_mounts(&mut rc.p, "hot", n)?;
    let r = HotMount {
        calls: n,
        bai: hb,
        rclone: hr,
    };
    let (b50, b99, r50, r99) = r.p50_p99();
    bai.p.remove("hot")?;
    say(&format!(
        "hot Mount p50/p99: bai-s3 {b50:.3}/{b99:.3} ms, rclone {r50:.3}/{r99:.3} ms"
    ));
    rc.p.remove("hot")?;
    Ok(r)
}

/// `n` Mounts of an already-mounted volume, each with a new ID, on one kept-alive connection;
/// then Unmount of all of them. Returns sorted latencies.
pub fn hot_mounts(p: &mut Plugin, vol: &str, n: usize) -> Res<Vec<Duration>> {
    p.mount(vol, "hot-first")?;
    for i in 0..20 {
        p.mount(vol, &format!("warm-{i}"))?;
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("hot-{i:05}");
        let t = Instant::now();
        p.mount(vol, &id)?;
        v.push(t.elapsed());
    }
    for i in 0..n {
        p.unmount(vol, &format!("hot-{i:05}"))?;
    }
    for i in 0..20 {
        p.unmount(vol, &format!("warm-{i}"))?;
    }
    p.unmount(vol, "hot-first")?;
    v.sort();
    Ok(v)
}
