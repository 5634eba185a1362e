//! The daemon killed at random points of a Mount/Unmount workload: after each restart every
//! volume is listed, holders are what the callers hold, held volumes are mounted and answer, and
//! there is exactly one s3fs per bucket in use.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::s3fs_of_bucket;
use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Mount,
    Unmount,
}

/// What the callers know: per (volume, ID) the number of Mounts not yet unmounted, and the one
/// call whose outcome is unknown (it got no answer, or an error).
struct CrashModel {
    held: HashMap<(usize, usize), u64>,
    unknown: Option<(Op, usize, usize, String)>,
    paused: bool,
    stop: bool,
    client_idle: bool,
    in_flight: bool,
    /// The call in flight starts or ends a mount (first Mount, last Unmount).
    transition: bool,
    transitions_ok: u64,
    ops_ok: u64,
    ops_unanswered: u64,
    /// Errors answered by a live daemon (not caused by a kill): each is a failure.
    answered_errors: Vec<String>,
}

impl CrashModel {
    fn sum(&self, v: usize) -> u64 {
        self.held
            .iter()
            .filter(|((vv, _), _)| *vv == v)
            .map(|(_, n)| *n)
            .sum()
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn daemon_killed_at_random_points_keeps_volumes_mounts_and_counts() {
    let Some((s3, mut d)) = setup("daemon_killed_at_random_points_keeps_volumes_mounts_and_counts")
    else {
        return;
    };
    const KILLS: u32 = 80;
    const IDS: usize = 3;
    let started = Instant::now();
    let bucket_a = new_bucket(s3, "crash-a");
    let bucket_b = new_bucket(s3, "crash-b");
    // Two volumes share bucket A's s3fs (one whole-bucket, one prefix); one is on bucket B.
    let names: Vec<String> = (0..3)
        .map(|i| unique_name(&format!("crash-v{i}")))
        .collect();
    create_ok(&d, &names[0], &[("bucket", &bucket_a)]);
    create_ok(&d, &names[1], &[("bucket", &bucket_a), ("prefix", "sub")]);
    create_ok(&d, &names[2], &[("bucket", &bucket_b)]);
    let ids: Vec<String> = (0..IDS).map(|_| new_id()).collect();
    let buckets = [bucket_a.clone(), bucket_b.clone()];
    let bucket_vols: [Vec<usize>; 2] = [vec![0, 1], vec![2]];

    let shared = Arc::new((
        Mutex::new(CrashModel {
            held: HashMap::new(),
            unknown: None,
            paused: false,
            stop: false,
            client_idle: false,
            in_flight: false,
            transition: false,
            transitions_ok: 0,
            ops_ok: 0,
            ops_unanswered: 0,
            answered_errors: Vec::new(),
        }),
        Condvar::new(),
    ));
    let socket = d.socket.clone();

    let mut kills_in_flight = 0u32;
    let mut kills_in_transition = 0u32;
    let mut resolved_applied = 0u32;
    let mut resolved_not_applied = 0u32;
    let mut rng = Rng::new("crash test (main)");

    std::thread::scope(|scope| {
        // The client: random Mount/Unmount calls, one at a time, as dockerd would send them.
        let sh = Arc::clone(&shared);
        let (names_c, ids_c) = (names.clone(), ids.clone());
        let client = scope.spawn(move || {
            let (lock, cv) = &*sh;
            let mut rng = Rng::new("crash test (client)");
            loop {
                let (op, v, i) = {
                    let mut m = lock.lock().unwrap();
                    while !m.stop && (m.paused || m.unknown.is_some()) {
                        m.client_idle = true;
                        cv.notify_all();
                        m = cv.wait(m).unwrap();
                    }
                    if m.stop {
                        m.client_idle = true;
                        cv.notify_all();
                        return;
                    }
                    m.client_idle = false;
                    // Keep counts small, so that most calls start or stop a mount (first
                    // Mount, last Unmount) rather than only count.
                    let v = rng.below(names_c.len() as u64) as usize;
                    let i = rng.below(IDS as u64) as usize;
                    let sum = m.sum(v);
                    let held: Vec<usize> = (0..IDS)
                        .filter(|i| m.held.get(&(v, *i)).copied().unwrap_or(0) > 0)
                        .collect();
                    let unmount = match sum {
                        0 => rng.chance(5), // an ID that holds nothing
                        1 => rng.chance(50),
                        _ => rng.chance(75),
                    };
                    let pick = if unmount && !held.is_empty() && !rng.chance(5) {
                        (Op::Unmount, v, held[rng.below(held.len() as u64) as usize])
                    } else if unmount {
                        (Op::Unmount, v, i)
                    } else {
                        (Op::Mount, v, i)
                    };
                    m.transition = match pick.0 {
                        Op::Mount => sum == 0,
                        Op::Unmount => sum == 1 && !held.is_empty() && held.contains(&pick.2),
                    };
                    m.in_flight = true;
                    pick
                };
                let method = match op {
                    Op::Mount => "VolumeDriver.Mount",
                    Op::Unmount => "VolumeDriver.Unmount",
                };
                let ans = answer(
                    &socket,
                    method,
                    &json!({"Name": names_c[v], "ID": ids_c[i]}),
                );
                let mut m = lock.lock().unwrap();
                m.in_flight = false;
                match ans {
                    Answer::Ok => {
                        m.ops_ok += 1;
                        if m.transition {
                            m.transitions_ok += 1;
                        }
                        let e = m.held.entry((v, i)).or_insert(0);
                        match op {
                            Op::Mount => *e += 1,
                            Op::Unmount => *e = e.saturating_sub(1),
                        }
                    }
                    Answer::Err(e) => {
                        m.unknown = Some((op, v, i, e.clone()));
                        m.answered_errors
                            .push(format!("{op:?} {} ID#{i}: answered Err: {e}", names_c[v]));
                    }
                    Answer::None(e) => {
                        m.ops_unanswered += 1;
                        m.unknown = Some((op, v, i, e));
                    }
                }
                cv.notify_all();
            }
        });

        // Whatever happens below (a failed check panics), the client must stop, or the scope
        // would wait for it forever.
        let _stopper = StopClient(&shared);
        let (lock, cv) = &*shared;
        let unpause = || {
            let mut m = lock.lock().unwrap();
            m.paused = false;
            cv.notify_all();
        };
        for k in 1..=KILLS {
            assert!(
                started.elapsed() < Duration::from_secs(170),
                "only {} kills in {:?}: the test would take more than 3 minutes",
                k - 1,
                started.elapsed()
            );
            // Let the workload run for a random short while (this is the kill point, not a
            // wait for readiness).
            std::thread::sleep(Duration::from_millis(rng.below(700)));
            let (was_in_flight, transition) = {
                let m = lock.lock().unwrap();
                (m.in_flight, m.in_flight && m.transition)
            };
            d.kill9();
            if was_in_flight {
                kills_in_flight += 1;
            }
            if transition {
                kills_in_transition += 1;
            }
            // Pause the client once its call (if any) has returned.
            {
                let mut m = lock.lock().unwrap();
                m.paused = true;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !m.client_idle || m.in_flight {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(
                        !left.is_zero(),
                        "the client did not come to rest after kill {k}"
                    );
                    m = cv.wait_timeout(m, left).unwrap().0;
                }
            }
            // Every fourth restart meets a backends file being edited (too open to be used):
            // live mounts must be adopted all the same.
            let broken = k % 4 == 0;
            if broken {
                fs::set_permissions(&d.config, fs::Permissions::from_mode(0o644)).unwrap();
            }
            d.restart();

            // Resolve the call whose outcome is unknown from what Get says.
            let mut m = lock.lock().unwrap();
            if let Some((op, v, i, why)) = m.unknown.take() {
                let st = status(&d, &names[v]);
                let h = holders(&st);
                let s = m.sum(v);
                let mine = m.held.get(&(v, i)).copied().unwrap_or(0);
                let applied = match op {
                    Op::Mount if h == s + 1 => true,
                    Op::Mount if h == s => false,
                    Op::Unmount if mine > 0 && h + 1 == s => true,
                    Op::Unmount if h == s => false,
                    _ => panic!(
                        "kill {k}: after an unanswered {op:?} of {} by ID#{i} ({why}), Get says holders {h}, but the callers hold {s} (ID#{i}: {mine}); no outcome of that call explains it: {st}\n{}",
                        names[v],
                        d.logs_tail(60)
                    ),
                };
                if applied {
                    resolved_applied += 1;
                    let e = m.held.entry((v, i)).or_insert(0);
                    match op {
                        Op::Mount => *e += 1,
                        Op::Unmount => *e -= 1,
                    }
                } else {
                    resolved_not_applied += 1;
                }
            }
            let expect: Vec<u64> = (0..names.len()).map(|v| m.sum(v)).collect();
            drop(m);
            check_crash_invariants(&d, k, &names, &buckets, &bucket_vols, &expect);
            if broken {
                d.write_backends(&[s3.backend("default")]);
            }
            unpause();
        }
        {
            let mut m = lock.lock().unwrap();
            m.stop = true;
            cv.notify_all();
        }
        client.join().expect("client thread panicked");
    });

    let (lock, _) = &*shared;
    let mut m = lock.lock().unwrap();
    assert!(
        m.answered_errors.is_empty(),
        "the live daemon answered errors to Mount/Unmount calls: {:#?}\n{}",
        m.answered_errors,
        d.logs_tail(60)
    );
    // A call the last kill left unknown: resolve it from Get too.
    if let Some((op, v, i, _)) = m.unknown.take() {
        let h = holders(&status(&d, &names[v]));
        let s = m.sum(v);
        if op == Op::Mount && h == s + 1 {
            *m.held.entry((v, i)).or_insert(0) += 1;
        } else if op == Op::Unmount && h + 1 == s {
            *m.held.entry((v, i)).or_insert(0) -= 1;
        }
    }
    let expect: Vec<u64> = (0..names.len()).map(|v| m.sum(v)).collect();
    check_crash_invariants(&d, KILLS + 1, &names, &buckets, &bucket_vols, &expect);
    say(&format!(
        "crash test: {KILLS} kills ({kills_in_flight} with a call in flight, {kills_in_transition} during a first Mount or last Unmount), {} calls answered ({} first Mounts or last Unmounts), {} unanswered ({resolved_applied} had taken effect, {resolved_not_applied} had not), {:?}",
        m.ops_ok,
        m.transitions_ok,
        m.ops_unanswered,
        started.elapsed()
    ));
    assert!(m.ops_ok >= 50, "too few calls answered: {}", m.ops_ok);
    assert!(
        kills_in_transition >= 5,
        "only {kills_in_transition} of {KILLS} kills hit a first Mount or last Unmount"
    );
    // Unmount everything the callers hold: nothing may be left.
    let held: Vec<((usize, usize), u64)> = m.held.iter().map(|(k, n)| (*k, *n)).collect();
    for ((v, i), n) in held {
        for _ in 0..n {
            unmount_ok(&d, &names[v], &ids[i]);
        }
    }
    for n in &names {
        let st = status(&d, n);
        assert!(
            holders(&st) == 0 && !mounted(&st),
            "{n} after unmounting everything: {st}"
        );
        assert!(d.list_names().contains(n));
    }
    wait_all_unmounted(&d);
}

/// Stops the crash test's client when dropped (also while a failed check unwinds).
struct StopClient<'a>(&'a (Mutex<CrashModel>, Condvar));

impl Drop for StopClient<'_> {
    fn drop(&mut self) {
        let (lock, cv) = self.0;
        let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
        m.stop = true;
        cv.notify_all();
    }
}

/// After a restart: every volume listed, counts as the callers hold them, held volumes mounted
/// and answering, unheld ones not mounted, exactly one s3fs per bucket in use and none for a
/// bucket not in use.
fn check_crash_invariants(
    d: &Daemon,
    k: u32,
    names: &[String],
    buckets: &[String],
    bucket_vols: &[Vec<usize>],
    expect: &[u64],
) {
    let listed = d.list_names();
    for n in names {
        assert!(
            listed.contains(n),
            "kill {k}: the restarted daemon does not list {n}: {listed:?}"
        );
    }
    let mut last = String::new();
    let ok = poll(Duration::from_secs(25), || {
        for (v, n) in names.iter().enumerate() {
            let st = match d.status(n) {
                Ok(st) => st,
                Err(e) => {
                    last = format!("Get {n}: {e}");
                    return None;
                }
            };
            let mp = d.mountpoint_of(n);
            if holders(&st) != expect[v] {
                // Counts come from the state file: they are right at once or never.
                panic!(
                    "kill {k}: {n} has holders {} but the callers hold {}: {st}\n{}",
                    holders(&st),
                    expect[v],
                    d.logs_tail(60)
                );
            }
            let want = expect[v] > 0;
            if mounted(&st) != want
                || is_mountpoint(&mp) != want
                || (want && (health(&st) != "ok" || !statvfs_ok(&mp) || fs::read_dir(&mp).is_err()))
            {
                last = format!(
                    "{n}: held {} but Status {st}, mount point mounted {}, statvfs {}",
                    expect[v],
                    is_mountpoint(&mp),
                    statvfs_ok(&mp)
                );
                return None;
            }
        }
        for (b, bucket) in buckets.iter().enumerate() {
            let in_use = bucket_vols[b].iter().any(|v| expect[*v] > 0);
            let pids = s3fs_of_bucket(d, bucket);
            if pids.len() != usize::from(in_use) {
                last = format!(
                    "bucket {bucket} (in use: {in_use}) has s3fs {:?}",
                    pids.iter()
                        .map(|p| format!("{p}: {}", cmdline(*p).join(" ")))
                        .collect::<Vec<_>>()
                );
                return None;
            }
        }
        Some(())
    });
    if ok.is_none() {
        panic!(
            "kill {k}: after the restart the mounts do not match what the callers hold: {last}\nmounts: {:?}\n{}",
            d.mounts()
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>(),
            d.logs_tail(80)
        );
    }
}
