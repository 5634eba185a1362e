//! Mount churn, with and without an unmount delay, and the delay ended by a Remove or a SIGTERM.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Mount and Unmount `vol` `n` times, each with a new ID (as container start/stop does).
fn churn(d: &Daemon, vol: &str, n: usize) {
    for i in 0..n {
        let id = new_id();
        let mp = d
            .mount(vol, &id)
            .unwrap_or_else(|e| panic!("cycle {i}: Mount failed: {e}\n{}", d.logs_tail(40)));
        fs::metadata(&mp).unwrap_or_else(|e| panic!("cycle {i}: stat {}: {e}", mp.display()));
        unmount_ok(d, vol, &id);
    }
}

/// "s3fs started" lines in the daemon's log after byte `from`.
fn s3fs_starts(d: &Daemon, from: usize) -> usize {
    let logs = d.logs();
    logs.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("s3fs started"))
        .count()
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn churn_with_unmount_delay_starts_one_s3fs() {
    let Some((s3, d)) = setup_with(
        "churn_with_unmount_delay_starts_one_s3fs",
        &["--unmount-delay", "3"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "churn-delay");
    let vol = unique_name("churn-delay-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let from = d.logs().len();
    let started = Instant::now();
    churn(&d, &vol, 50);
    let took = started.elapsed();
    let starts = s3fs_starts(&d, from);
    let pids = d.s3fs_pids();
    say(&format!(
        "50 cycles with --unmount-delay 3: {took:?}, {starts} s3fs started, alive {pids:?}"
    ));
    assert_eq!(
        starts,
        1,
        "50 Mount/Unmount cycles within the unmount delay started {starts} s3fs\n{}",
        d.logs_tail(40)
    );
    assert_eq!(pids.len(), 1, "s3fs alive during the delay: {pids:?}");
    // The delay then ends the mount on its own.
    let st = d.status(&vol).unwrap();
    assert_eq!(st.get("holders"), Some(&json!(0)), "{st}");
    wait_nothing_mounted(&d, "3 s after the last Unmount", Duration::from_secs(15));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn churn_without_unmount_delay_starts_one_s3fs_per_cycle() {
    let Some((s3, d)) = setup("churn_without_unmount_delay_starts_one_s3fs_per_cycle") else {
        return;
    };
    let b = new_bucket(s3, "churn-nodelay");
    let vol = unique_name("churn-nodelay-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let from = d.logs().len();
    let started = Instant::now();
    churn(&d, &vol, 50);
    let starts = s3fs_starts(&d, from);
    say(&format!(
        "50 cycles without delay: {:?}, {starts} s3fs started",
        started.elapsed()
    ));
    assert_eq!(
        starts,
        50,
        "50 Mount/Unmount cycles without an unmount delay started {starts} s3fs\n{}",
        d.logs_tail(40)
    );
    wait_nothing_mounted(&d, "after the last Unmount", Duration::from_secs(15));
}

/// A daemon with `--unmount-delay 30` and a volume (bucket and name tagged `tag`) whose only
/// holder has left: still mounted, its s3fs waiting out the delay. None when the test is skipped.
fn in_the_unmount_delay(test: &str, tag: &str) -> Option<(Daemon, String)> {
    let (s3, d) = setup_with(test, &["--unmount-delay", "30"])?;
    let b = new_bucket(s3, tag);
    let vol = unique_name(&format!("{tag}-vol"));
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    unmount_ok(&d, &vol, &id);
    assert!(
        is_mountpoint(&mp) && d.s3fs_pids().len() == 1,
        "with --unmount-delay 30 the mount should still be there after the last Unmount"
    );
    Some((d, vol))
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn remove_during_the_unmount_delay_ends_the_wait() {
    let Some((d, vol)) = in_the_unmount_delay(
        "remove_during_the_unmount_delay_ends_the_wait",
        "delay-remove",
    ) else {
        return;
    };
    let t = Instant::now();
    d.remove(&vol)
        .unwrap_or_else(|e| panic!("Remove during the delay: {e}\n{}", d.logs_tail(30)));
    let took = t.elapsed();
    // Checked at once: Remove returns after the unmount, not before.
    let left = (d.s3fs_pids(), d.mounts().len());
    assert!(
        left.0.is_empty() && left.1 == 0,
        "right after Remove returned ({took:?}): s3fs {:?}, {} mounts\n{}",
        left.0,
        left.1,
        d.logs_tail(30)
    );
    assert!(!d.list_names().contains(&vol), "the volume is still listed");
    assert!(d.get(&vol).is_err(), "Get of the removed volume succeeded");
    assert!(took < Duration::from_secs(10), "Remove took {took:?}");
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn sigterm_during_the_unmount_delay_ends_the_wait() {
    let Some((mut d, vol)) = in_the_unmount_delay(
        "sigterm_during_the_unmount_delay_ends_the_wait",
        "delay-term",
    ) else {
        return;
    };
    let pid = d.pid().unwrap_or(0);
    let took = d.terminate(Duration::from_secs(10));
    let logs = d.logs();
    assert!(
        took.is_some() && logs.contains("SIGTERM"),
        "the daemon ({pid}) did not stop within 10 s of SIGTERM\n{}",
        d.logs_tail(30)
    );
    let left = (d.s3fs_pids(), d.mounts().len());
    assert!(
        left.0.is_empty() && left.1 == 0,
        "after the daemon exited on SIGTERM ({took:?}): s3fs {:?}, {} mounts\n{}",
        left.0,
        left.1,
        d.logs_tail(30)
    );
    // The volume survives the restart, unheld.
    d.restart();
    let st = d.status(&vol).unwrap();
    assert_eq!(st.get("holders"), Some(&json!(0)), "{st}");
    assert_eq!(st.get("mounted"), Some(&json!(false)), "{st}");
}
