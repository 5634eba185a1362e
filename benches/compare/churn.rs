//! Churn: Mount/Unmount cycles of a volume's only holder, bai-s3 with `--unmount-delay` 0 and
//! 5, and rclone (restarted if it hangs).

use std::time::{Duration, Instant};

use crate::client::Plugin;
use crate::rig::{bucket, remote, start_bai, start_rclone, stop_rclone, Bai, Env, Rclone};
use crate::{say, Res};

pub const CYCLES: usize = 200;

pub struct Churn {
    pub cycles: usize,
    pub delay0: Duration,
    /// s3fs started during the cycles ("s3fs mount ready" lines).
    pub delay0_spawned: usize,
    pub delay5: Duration,
    pub delay5_spawned: usize,
    /// rclone's wall time, or how it hung or failed.
    pub rclone: Result<Duration, String>,
}

/// Returns the result and the rclone to go on with (a new one when it had to be restarted).
pub fn run(env: &Env, bai: &mut Bai, mut rc: Rclone) -> Res<(Churn, Rclone)> {
    let cycles = CYCLES;
    say(&format!(
        "churn: {cycles} Mount/Unmount cycles, --unmount-delay 0 and 5"
    ));
    bai.p.create("churn", &bucket("bench-churn"))?;
    rc.p.create("churn", &remote("bench-churn"))?;
    bai.wait_no_s3fs()?;
    let ready0 = bai.ready_lines();
    let ch0 = churn(&mut bai.p, "churn", cycles)?;
    let ch0_spawned = bai.ready_lines() - ready0;
    let mut bai5 = start_bai(env, "bai-delay5", &["--unmount-delay", "5"])?;
    bai5.p.create("churn", &bucket("bench-churn"))?;
    let ready0 = bai5.ready_lines();
    let ch5 = churn(&mut bai5.p, "churn", cycles)?;
    let ch5_spawned = bai5.ready_lines() - ready0;
    bai5.stop();
    say(&format!(
        "bai-s3 churn: {:.2} s with {ch0_spawned} s3fs spawned (delay 0), {:.2} s with {ch5_spawned} (delay 5); now rclone",
        ch0.as_secs_f64(),
        ch5.as_secs_f64()
    ));
    // rclone 1.60 can deadlock here (Volume.mount blocks sending on the monitor channel
    // while the monitor waits for the driver lock): bound each call and restart it if so.
    rc.p.set_timeout(Duration::from_secs(20));
    let chr = match churn_counted(&mut rc.p, "churn", cycles) {
        Ok(d) => Ok(d),
        Err((done, e)) => {
            say(&format!(
                "rclone churn failed after {done} cycles: {e}; restarting rclone"
            ));
            stop_rclone(rc, env, "rclone");
            rc = start_rclone(env, "rclone2")?;
            Err(format!(
                "rclone hung/failed after {done} of {cycles} cycles: {e}"
            ))
        }
    };
    rc.p.set_timeout(Duration::from_secs(300));
    bai.p.remove("churn")?;
    if chr.is_ok() {
        rc.p.remove("churn")?;
    }
    let r = Churn {
        cycles,
        delay0: ch0,
        delay0_spawned: ch0_spawned,
        delay5: ch5,
        delay5_spawned: ch5_spawned,
        rclone: chr,
    };
    Ok((r, rc))
}

fn churn(p: &mut Plugin, vol: &str, n: usize) -> Res<Duration> {
    churn_counted(p, vol, n).map_err(|(_, e)| e)
}

/// `n` Mount/Unmount cycles of the only holder; on failure, the cycles completed.
fn churn_counted(p: &mut Plugin, vol: &str, n: usize) -> Result<Duration, (usize, String)> {
    let t = Instant::now();
    for i in 0..n {
        let id = format!("churn-{i}");
        p.mount(vol, &id).map_err(|e| (i, e))?;
        p.unmount(vol, &id).map_err(|e| (i, e))?;
    }
    Ok(t.elapsed())
}
