//! One session's last Unmount of a bucket meeting another's first Mount of it, with and without an
//! unmount delay: one working s3fs after every round.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// The Mounts of one case of [`unmount_meets_mount`]: latency, and whether the Mount came after
/// the old s3fs was gone and started a new one (else it joined the running one).
type Handovers = Vec<(Duration, bool)>;

/// One session's last Unmount of a bucket and another's first Mount of it, released at the same
/// moment by a barrier, `ROUNDS` times: even rounds mount another volume of the bucket, odd
/// rounds the same volume with another ID. With `delay` (`--unmount-delay`), the Mount is sent
/// when the delayed unmount is due (jittered around it), so it meets the release itself. Every
/// Mount must give a working mount (a file written, read back, listed and found in the bucket:
/// no ENOTCONN), and a monitor sampling `/proc` all through the race must never see two s3fs of
/// the bucket. Returns the Mounts by case.
fn unmount_meets_mount(test: &str, delay: Option<u64>) -> Option<[Handovers; 2]> {
    const ROUNDS: usize = 30;
    let delay_arg = delay.map(|s| s.to_string());
    let mut extra = vec!["--health-interval", "3600"];
    if let Some(s) = &delay_arg {
        extra.extend(["--unmount-delay", s.as_str()]);
    }
    let (s3, d) = setup_with(test, &extra)?;
    let bucket = new_bucket(s3, "handover");
    let a = unique_name("handover-a");
    let b = unique_name("handover-b");
    create_ok(&d, &a, &[("bucket", &bucket), ("prefix", "a")]);
    create_ok(&d, &b, &[("bucket", &bucket), ("prefix", "b")]);
    let mut latencies = [Vec::new(), Vec::new()];
    let mut rng = Rng::new(test);
    for round in 0..ROUNDS {
        let same = round % 2 == 1;
        let (leaving, coming) = (new_id(), new_id());
        mount_ok(&d, &a, &leaving);
        let old = d.s3fs_pids();
        let (vol, prefix) = if same { (&a, "a") } else { (&b, "b") };
        // Where the Mount is sent relative to the Unmount: at once, or when the delayed
        // unmount is due, up to 50 ms either side.
        let wait = delay
            .map(|s| Duration::from_millis(s * 1000 + rng.below(100)) - Duration::from_millis(50));
        let barrier = Barrier::new(2);
        let stop = AtomicBool::new(false);
        let most = AtomicUsize::new(0);
        let took = thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    most.fetch_max(d.s3fs_pids().len(), Ordering::AcqRel);
                }
            });
            s.spawn(|| {
                barrier.wait();
                unmount_ok(&d, &a, &leaving);
            });
            let mounter = s.spawn(|| {
                barrier.wait();
                if let Some(w) = wait {
                    thread::sleep(w);
                }
                let t0 = Instant::now();
                let mp = d.mount(vol, &coming).unwrap_or_else(|e| {
                    panic!(
                        "round {round}: Mount meeting the last Unmount: {e}\n{}",
                        d.logs_tail(40)
                    )
                });
                let took = t0.elapsed();
                let name = format!("round-{round}");
                let body = format!("written after the Mount of round {round}\n");
                let used = fs::write(mp.join(&name), &body)
                    .and_then(|()| fs::read_to_string(mp.join(&name)))
                    .and_then(|read| {
                        fs::read_dir(&mp)?
                            .flatten()
                            .any(|e| e.file_name() == name.as_str())
                            .then_some(read)
                            .ok_or_else(|| std::io::Error::other("not listed"))
                    });
                match used {
                    Ok(read) => assert_eq!(read, body, "round {round}"),
                    Err(e) => panic!(
                        "round {round}: the mount after Mount: {e}\n{}",
                        d.logs_tail(40)
                    ),
                }
                took
            });
            let took = mounter.join().expect("the mounting thread");
            stop.store(true, Ordering::Release);
            took
        });
        let new = d.s3fs_pids() != old;
        latencies[usize::from(same)].push((took, new));
        let key = format!("{prefix}/round-{round}");
        let stored = poll(Duration::from_secs(10), || {
            s3.s3().get(&bucket, &key).ok().flatten()
        });
        assert!(
            stored.is_some(),
            "round {round}: s3://{bucket}/{key} missing"
        );
        let seen = most.load(Ordering::Acquire);
        assert!(
            seen <= 1,
            "round {round}: {seen} s3fs of one bucket at once\n{}",
            d.logs_tail(40)
        );
        let st = status(&d, vol);
        assert!(mounted(&st) && holders(&st) == 1, "round {round}: {st}");
        assert_eq!(d.s3fs_pids().len(), 1, "round {round}");
        unmount_ok(&d, vol, &coming);
        // The next round starts from nothing mounted (a delayed unmount is waited out).
        wait_nothing_mounted(&d, "between rounds", Duration::from_secs(30));
    }
    d.remove(&a).unwrap();
    d.remove(&b).unwrap();
    Some(latencies)
}

fn report_handover(what: &str, rounds: [Handovers; 2]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (case, v) in ["another volume", "the same volume, another ID"]
        .iter()
        .zip(rounds)
    {
        for (outcome, new) in [
            ("joined the running s3fs", false),
            ("started a new s3fs", true),
        ] {
            let mut t: Vec<Duration> = v.iter().filter(|r| r.1 == new).map(|r| r.0).collect();
            t.sort();
            if let (Some(p50), Some(max)) = (t.get(t.len() / 2), t.last()) {
                say(&format!(
                    "{what}, {case}, {outcome} ({} of {} rounds): Mount p50 {:.1} ms, max {:.1} ms",
                    t.len(),
                    v.len(),
                    ms(*p50),
                    ms(*max)
                ));
            }
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_last_unmount_meeting_a_first_mount_leaves_one_working_s3fs() {
    let test = "a_last_unmount_meeting_a_first_mount_leaves_one_working_s3fs";
    if let Some(l) = unmount_meets_mount(test, None) {
        report_handover("no --unmount-delay", l);
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_delayed_unmount_meeting_a_first_mount_leaves_one_working_s3fs() {
    let test = "a_delayed_unmount_meeting_a_first_mount_leaves_one_working_s3fs";
    if let Some(l) = unmount_meets_mount(test, Some(1)) {
        report_handover("--unmount-delay 1", l);
    }
}
