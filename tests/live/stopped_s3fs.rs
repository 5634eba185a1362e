//! An s3fs stopped (SIGSTOP) under a writer: shown slow and left alone, a wedged one blocking only
//! Mounts of itself, and many health rounds that never grow the daemon's threads.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::*;
use crate::{root_s3fs, wait_adopted, Writer};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_slow_s3fs_is_shown_slow_and_left_alone() {
    let Some((s3, d)) = setup_with(
        "a_slow_s3fs_is_shown_slow_and_left_alone",
        &["--health-interval", "1"],
    ) else {
        return;
    };
    let bucket = new_bucket(s3, "slow");
    let vol = unique_name("slow");
    create_ok(&d, &vol, &[("bucket", &bucket)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1);
    let writer = Writer::start(&mp.join("job.log"));
    writer.wait_more(3, "before the stop");

    kill(Pid::from_raw(pids[0]), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let slow = poll(Duration::from_secs(20), || {
        let st = d.status(&vol).ok()?;
        (health(&st) == "slow").then_some(st)
    });
    // Keep it stopped for 12 s in all, over several health rounds, as a stalled store would.
    let rest = Duration::from_secs(12).saturating_sub(stopped.elapsed());
    thread::sleep(rest);
    let still = d.s3fs_pids();
    kill(Pid::from_raw(pids[0]), Signal::SIGCONT).unwrap();
    assert!(
        slow.is_some(),
        "Get never showed health: slow\n{}",
        d.logs_tail(40)
    );
    assert_eq!(still, pids, "the stopped s3fs was not killed");
    let st = poll(Duration::from_secs(20), || {
        let st = d.status(&vol).ok()?;
        (health(&st) == "ok").then_some(st)
    })
    .unwrap_or_else(|| panic!("health did not come back to ok\n{}", d.logs_tail(40)));
    assert!(mounted(&st));
    assert!(is_mountpoint(&mp));
    assert_eq!(d.s3fs_pids(), pids);
    writer.wait_more(3, "after the stop");
    writer.finish_into(&d, (&vol, &id), s3, (&bucket, "job.log"));
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_wedged_s3fs_blocks_only_mounts_of_itself() {
    let Some((s3, mut d)) = setup_with(
        "a_wedged_s3fs_blocks_only_mounts_of_itself",
        &["--mount-timeout", "5"],
    ) else {
        return;
    };
    let (b1, b2) = (new_bucket(s3, "wdg1"), new_bucket(s3, "wdg2"));
    let (va, vb, vc) = (
        unique_name("wdga"),
        unique_name("wdgb"),
        unique_name("wdgc"),
    );
    create_ok(&d, &va, &[("bucket", &b1)]);
    create_ok(&d, &vb, &[("bucket", &b1), ("prefix", "b")]);
    create_ok(&d, &vc, &[("bucket", &b2)]);
    let ida = new_id();
    mount_ok(&d, &va, &ida);
    let wedged = d.s3fs_pids();
    assert_eq!(wedged.len(), 1);
    kill(Pid::from_raw(wedged[0]), Signal::SIGSTOP).unwrap();

    let socket = d.socket.clone();
    let vb2 = vb.clone();
    let on_wedged = thread::spawn(move || {
        let t = Instant::now();
        let r = plugin_call(
            &socket,
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{vb2}","ID":"x1"}}"#),
        );
        (t.elapsed(), r)
    });
    // Meanwhile another bucket mounts, and List and Get answer, at once.
    let t = Instant::now();
    let idc = new_id();
    mount_ok(&d, &vc, &idc);
    let other_mount = t.elapsed();
    let t = Instant::now();
    assert!(d.list_names().contains(&va));
    status(&d, &va);
    let list = t.elapsed();
    let (took, r) = on_wedged.join().unwrap();
    let (code, body) = r.expect("Mount on the wedged s3fs was answered");
    let err = body["Err"].as_str().unwrap_or_default().to_string();
    assert_eq!(code, 500, "a refusal is an HTTP error to every client");
    assert!(
        err.contains("did not answer within 5 s") && err.contains(&b1),
        "Mount on the wedged s3fs says what happened: {err}"
    );
    assert!(
        took < Duration::from_secs(9),
        "the wedged Mount took {took:?}"
    );
    assert!(
        other_mount < Duration::from_secs(4),
        "another bucket's Mount took {other_mount:?}"
    );
    assert!(list < Duration::from_secs(1), "List and Get took {list:?}");
    assert_eq!(
        holders(&status(&d, &vb)),
        0,
        "the failed Mount holds nothing"
    );

    // SIGTERM with a Mount on the wedged s3fs in flight: the daemon still stops.
    let socket = d.socket.clone();
    let vb2 = vb.clone();
    let in_flight = thread::spawn(move || {
        plugin_call(
            &socket,
            "VolumeDriver.Mount",
            &format!(r#"{{"Name":"{vb2}","ID":"x2"}}"#),
        )
    });
    poll(Duration::from_secs(5), || {
        d.logs().contains("x2").then_some(())
    });
    let stop = d.terminate(Duration::from_secs(15));
    kill(Pid::from_raw(wedged[0]), Signal::SIGCONT).unwrap();
    let _ = in_flight.join();
    let stop =
        stop.unwrap_or_else(|| panic!("SIGTERM did not stop the daemon\n{}", d.logs_tail(40)));
    assert!(stop < Duration::from_secs(9), "SIGTERM took {stop:?}");
    assert_eq!(d.s3fs_pids().len(), 2, "SIGTERM leaves mounts in use alone");

    d.restart();
    wait_adopted(&d, &va, 1);
    wait_adopted(&d, &vc, 1);
    unmount_ok(&d, &va, &ida);
    unmount_ok(&d, &vc, &idc);
    for v in [&va, &vb, &vc] {
        d.remove(v).unwrap();
    }
}

/// Threads of process `pid` (/proc/PID/status).
fn threads_of(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_stopped_s3fs_never_grows_the_daemons_threads() {
    let Some((s3, mut d)) = setup_with(
        "a_stopped_s3fs_never_grows_the_daemons_threads",
        &["--health-interval", "1", "--mount-timeout", "5"],
    ) else {
        return;
    };
    let (b1, b2) = (new_bucket(s3, "thr1"), new_bucket(s3, "thr2"));
    let vols: Vec<String> = (0..8).map(|i| unique_name(&format!("thr{i}"))).collect();
    for (i, v) in vols.iter().enumerate() {
        create_ok(&d, v, &[("bucket", &b1), ("prefix", &format!("p{i}"))]);
    }
    let other = unique_name("thro");
    create_ok(&d, &other, &[("bucket", &b2)]);
    let ninth = unique_name("thr8");
    create_ok(&d, &ninth, &[("bucket", &b1), ("prefix", "p8")]);
    let ids: Vec<String> = vols.iter().map(|_| new_id()).collect();
    for (v, id) in vols.iter().zip(&ids) {
        mount_ok(&d, v, id);
    }
    let stopped = root_s3fs(&d);
    assert_eq!(stopped.len(), 1);
    let daemon = d.pid().unwrap();
    // The baseline: the most threads over a few health rounds of the running s3fs.
    let mut baseline = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        baseline = baseline.max(threads_of(daemon));
        thread::sleep(Duration::from_millis(100));
    }
    // One stuck probe and one stuck Mount at most, and a pool thread coming or going.
    const BOUND: usize = 4;

    kill(Pid::from_raw(stopped[0]), Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let (mut most, mut other_mount) = (0, None);
    let mut writer = None;
    // 35 s at one health round a second: the old probes added 8 stuck threads every round
    // (of 5 s, the probe timeout), 40 and more by the end.
    while t.elapsed() < Duration::from_secs(35) {
        let n = threads_of(daemon);
        most = most.max(n);
        assert!(
            n <= baseline + BOUND,
            "{n} threads after {:?} stopped (baseline {baseline})\n{}",
            t.elapsed(),
            d.logs_tail(30)
        );
        if other_mount.is_none() && t.elapsed() > Duration::from_secs(15) {
            // Meanwhile another bucket mounts, and a Mount of the stopped one is answered.
            let s = Instant::now();
            let id = new_id();
            let mp = mount_ok(&d, &other, &id);
            other_mount = Some((s.elapsed(), id));
            writer = Some(Writer::start(&mp.join("job.log")));
            let err = d
                .mount(&ninth, &new_id())
                .expect_err("the stopped s3fs answers nothing");
            assert!(err.contains("did not answer"), "{err}");
        }
        thread::sleep(Duration::from_millis(500));
    }
    let slow = status(&d, &vols[3]);
    assert_eq!(health(&slow), "slow", "{slow}");
    let (took, ido) = other_mount.unwrap();
    assert!(
        took < Duration::from_secs(4),
        "another bucket's Mount took {took:?}"
    );
    let writer = writer.unwrap();
    writer.wait_more(3, "on the other bucket while one s3fs is stopped");

    let stop = d.terminate(Duration::from_secs(15));
    kill(Pid::from_raw(stopped[0]), Signal::SIGCONT).unwrap();
    let stop =
        stop.unwrap_or_else(|| panic!("SIGTERM did not stop the daemon\n{}", d.logs_tail(40)));
    assert!(stop < Duration::from_secs(5), "SIGTERM took {stop:?}");
    eprintln!("threads: baseline {baseline}, most while stopped {most}; SIGTERM took {stop:?}");
    writer.wait_more(3, "after SIGTERM");

    d.restart();
    for v in vols.iter().chain([&other]) {
        wait_adopted(&d, v, 1);
    }
    writer.finish_into(&d, (&other, &ido), s3, (&b2, "job.log"));
    for (v, id) in vols.iter().zip(&ids) {
        unmount_ok(&d, v, id);
    }
    for v in vols.iter().chain([&other, &ninth]) {
        d.remove(v).unwrap();
    }
}
