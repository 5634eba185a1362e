//! Faults and concurrency, each proven by a test that tries it: the daemon killed at random
//! points of a Mount/Unmount workload, s3fs killed under a mounted volume, the object store
//! down, a read-only or full state folder, a damaged state file, a backends file changed or
//! broken while volumes are mounted, and many clients racing on a few volumes.
//!
//! Every test talks to the real `bai-s3 serve` over its socket, with real s3fs and SeaweedFS.
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Live s3fs processes of this daemon that mount `bucket` (s3fs's first argument).
fn s3fs_of_bucket(d: &Daemon, bucket: &str) -> Vec<i32> {
    d.s3fs_pids()
        .into_iter()
        .filter(|p| cmdline(*p).get(1).map(|b| b == bucket).unwrap_or(false))
        .collect()
}

/// Number of live s3fs per bucket, for every s3fs of this daemon.
fn s3fs_per_bucket(d: &Daemon) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in d.s3fs_pids() {
        // An s3fs that exited since it was listed has no command line left (a zombie until
        // reaped); it serves no bucket.
        let Some(b) = cmdline(p).get(1).cloned() else {
            continue;
        };
        *m.entry(b).or_insert(0) += 1;
    }
    m
}

fn lines_matching(d: &Daemon, needle: &str) -> Vec<String> {
    d.logs()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The daemon killed at random points of a Mount/Unmount workload
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 2. s3fs killed under a mounted volume: the periodic health check repairs it
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn killed_s3fs_is_shown_stale_and_remounted_by_the_health_check() {
    let Some((s3, d)) = setup_with(
        "killed_s3fs_is_shown_stale_and_remounted_by_the_health_check",
        &["--health-interval", "1"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "heal");
    let vol = unique_name("heal-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("before.txt"), b"before").unwrap();
    s3_poll(s3, &b, "before.txt", b"before", Duration::from_secs(15));

    // The health check may repair the mount within a second; Get must show "stale" in
    // between. Try a few kills, so that a kill landing just before a check does not fail the
    // test, but a daemon that never shows "stale" does.
    let mut saw_stale = false;
    let mut killed = Vec::new();
    for _attempt in 0..3 {
        let pids = s3fs_of_bucket(&d, &b);
        assert_eq!(pids.len(), 1, "expected one s3fs for {b}: {pids:?}");
        let pid = pids[0];
        sigkill(pid).unwrap();
        killed.push(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let st = status(&d, &vol);
            if health(&st) == "stale" {
                saw_stale = true;
                break;
            }
            if health(&st) == "ok" && s3fs_of_bucket(&d, &b).iter().any(|p| !killed.contains(p)) {
                break; // repaired before we looked
            }
        }
        // Repaired without any Mount call: health ok, a new s3fs, the same holders.
        let mut last = Value::Null;
        let healed = poll(Duration::from_secs(20), || {
            last = status(&d, &vol);
            let pids = s3fs_of_bucket(&d, &b);
            (health(&last) == "ok"
                && mounted(&last)
                && pids.len() == 1
                && !killed.contains(&pids[0])
                && statvfs_ok(&mp))
            .then_some(())
        });
        assert!(
            healed.is_some(),
            "the health check did not mount {vol} again within 20 s after s3fs {pid} was killed; last Status {last}; s3fs {:?}\n{}",
            s3fs_of_bucket(&d, &b),
            d.logs_tail(60)
        );
        assert_eq!(holders(&last), 1, "holders changed by the repair: {last}");
        if saw_stale {
            break;
        }
    }
    assert!(
        saw_stale,
        "Get never showed health \"stale\" between the kill of s3fs and its repair (3 tries)"
    );

    // The mount point answers: readdir works (no ENOTCONN), the old file reads, a new one
    // writes, and no "file exists" anywhere.
    let entries: Vec<String> = fs::read_dir(&mp)
        .unwrap_or_else(|e| panic!("readdir {} after the repair: {e}", mp.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.contains(&"before.txt".to_string()), "{entries:?}");
    assert_eq!(fs::read(mp.join("before.txt")).unwrap(), b"before");
    fs::write(mp.join("after.txt"), b"after").unwrap();
    fs::create_dir(mp.join("newdir")).unwrap();
    s3_poll(s3, &b, "after.txt", b"after", Duration::from_secs(15));
    assert_eq!(
        mounts_under(&mp).len(),
        1,
        "stacked mounts at the mount point after the repair: {:?}",
        mounts_under(&mp)
    );
    let exists = lines_matching(&d, "File exists");
    assert!(exists.is_empty(), "\"File exists\" in the log: {exists:#?}");
    let repairs = lines_matching(&d, "health check: mount is stale");
    assert!(
        !repairs.is_empty(),
        "the log does not say the health check repaired the mount"
    );
    unmount_ok(&d, &vol, &id);
    wait_all_unmounted(&d);
    assert!(!mp.exists(), "the mount point folder is left after Unmount");
}

// ---------------------------------------------------------------------------------------------
// 3. The object store down
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn object_store_down_create_and_mount_fail_in_bounded_time_and_leave_nothing() {
    if !prereqs("object_store_down_create_and_mount_fail_in_bounded_time_and_leave_nothing") {
        return;
    }
    let srv = S3Server::start_private();
    let d = Daemon::start_with(&[srv.backend("default")], &["--mount-timeout", "5"]);
    let b_pre = new_bucket(&srv, "down-pre");
    let b_new = new_bucket(&srv, "down-new");
    let vol_pre = unique_name("down-pre");
    let vol_new = unique_name("down-new");
    create_ok(&d, &vol_pre, &[("bucket", &b_pre)]);
    create_ok(&d, &vol_new, &[("bucket", &b_new)]);
    let id_pre = new_id();
    let mp_pre = mount_ok(&d, &vol_pre, &id_pre);
    fs::write(mp_pre.join("before.txt"), b"before").unwrap();
    s3_poll(
        &srv,
        &b_pre,
        "before.txt",
        b"before",
        Duration::from_secs(15),
    );

    srv.stop();

    // Create: an Err within the check timeout that says the endpoint does not answer.
    let t = Instant::now();
    let e = d
        .create(&unique_name("down-x"), &[("bucket", &b_new)])
        .expect_err("Create succeeded with the object store down");
    let create_took = t.elapsed();
    assert!(
        create_took < Duration::from_secs(15),
        "Create took {create_took:?} to fail"
    );
    let el = e.to_lowercase();
    assert!(
        (el.contains("unreachable") || el.contains("did not answer") || el.contains("connect"))
            && e.contains(&srv.endpoint),
        "Create's Err does not say that {} did not answer: {e}",
        srv.endpoint
    );

    // Mount of a volume not mounted yet: an Err within --mount-timeout 5 + margin.
    let t = Instant::now();
    let e = d
        .mount(&vol_new, &new_id())
        .expect_err("Mount succeeded with the object store down");
    let took = t.elapsed();
    say(&format!(
        "store down: Create failed in {create_took:?}, Mount failed in {took:?}: {e}"
    ));
    assert!(
        took < Duration::from_secs(5 + 2),
        "Mount took {took:?} to fail with --mount-timeout 5: {e}"
    );
    // s3fs's own words say why: it could not connect.
    assert!(
        e.contains("CURLE_COULDNT_CONNECT") || e.contains("unable to connect"),
        "Mount's Err does not carry s3fs's words about the connection: {e}"
    );
    let mp_new = d.mountpoint_of(&vol_new);
    let leftovers = poll(Duration::from_secs(5), || {
        (s3fs_of_bucket(&d, &b_new).is_empty() && !is_mountpoint(&mp_new) && !mp_new.exists())
            .then_some(())
    });
    let shared_dirs: Vec<String> = fs::read_dir(d.mount_root.join(".s3fs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&b_new))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_some() && shared_dirs.is_empty(),
        "the failed Mount left: s3fs {:?}, mounted {}, folder {}, shared folders {shared_dirs:?}",
        s3fs_of_bucket(&d, &b_new),
        is_mountpoint(&mp_new),
        mp_new.exists()
    );
    let st = status(&d, &vol_new);
    assert!(
        holders(&st) == 0 && !mounted(&st),
        "the failed Mount counted a holder: {st}"
    );

    // Get and List answer at once.
    for _ in 0..5 {
        let t = Instant::now();
        let st = status(&d, &vol_pre);
        let names = d.list_names();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "Get+List took {:?}",
            t.elapsed()
        );
        assert!(holders(&st) == 1 && mounted(&st), "{st}");
        assert!(names.contains(&vol_pre) && names.contains(&vol_new));
    }

    // The store is back: the mount made before it went down reads and writes again.
    srv.start();
    let mut last = String::new();
    let back = poll(Duration::from_secs(30), || {
        let r = fs::write(mp_pre.join("after.txt"), b"after")
            .and_then(|_| fs::read(mp_pre.join("after.txt")))
            .and_then(|a| fs::read(mp_pre.join("before.txt")).map(|b| (a, b)));
        match r {
            Ok((a, b)) if a == b"after" && b == b"before" => Some(()),
            other => {
                last = format!("{other:?}");
                None
            }
        }
    });
    assert!(
        back.is_some(),
        "the mount made before the outage does not work after it: {last}"
    );
    s3_poll(&srv, &b_pre, "after.txt", b"after", Duration::from_secs(15));
    // And the volume that failed to mount mounts now.
    let id_new = new_id();
    mount_ok(&d, &vol_new, &id_new);
    unmount_ok(&d, &vol_new, &id_new);
    unmount_ok(&d, &vol_pre, &id_pre);
    wait_all_unmounted(&d);
    d.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// 4. A read-only or full state folder
// ---------------------------------------------------------------------------------------------

/// A mount on the state folder made by the test; unmounted on drop (also when the test fails).
struct StateMount(PathBuf);

impl Drop for StateMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn read_only_state_folder_refuses_changes_and_keeps_the_file() {
    let Some((s3, d)) = setup("read_only_state_folder_refuses_changes_and_keeps_the_file") else {
        return;
    };
    let b1 = new_bucket(s3, "rostate1");
    let b2 = new_bucket(s3, "rostate2");
    let v1 = unique_name("rostate-v1");
    let v2 = unique_name("rostate-v2");
    create_ok(&d, &v1, &[("bucket", &b1)]);
    create_ok(&d, &v2, &[("bucket", &b2)]);
    let a = new_id();
    let mp1 = mount_ok(&d, &v1, &a);
    let state_file = store_path(&d.state_dir);
    let before = store_rows(&d.state_dir).expect("store");

    // Read-only for the files the daemon holds open too (a read-only bind mount would only
    // stop new opens): the folder and every file in it immutable.
    let sd = d.state_dir.to_str().unwrap().to_string();
    let guard = Immutable::set(&d.state_dir);
    assert!(
        fs::write(d.state_dir.join("probe"), b"x").is_err(),
        "the state folder is still writable"
    );

    // A new holder of a mounted volume: refused, naming the state file.
    let e = d
        .mount(&v1, &new_id())
        .expect_err("Mount succeeded with a read-only state folder");
    assert!(
        e.contains(&state_file.display().to_string()),
        "the Err does not name the state file {}: {e}",
        state_file.display()
    );
    let st = status(&d, &v1);
    assert!(
        holders(&st) == 1 && mounted(&st) && statvfs_ok(&mp1),
        "the refused Mount changed {v1}: {st}"
    );
    // An Unmount cannot be recorded either: refused, the holder stays.
    let e = d
        .unmount(&v1, &a)
        .expect_err("Unmount succeeded with a read-only state folder");
    assert!(
        e.contains(&sd),
        "the Err does not name the state folder: {e}"
    );
    let st = status(&d, &v1);
    assert!(
        holders(&st) == 1 && mounted(&st) && statvfs_ok(&mp1),
        "the refused Unmount changed {v1}: {st}"
    );
    // The first Mount of a volume: refused, nothing mounted, nothing left.
    let e = d
        .mount(&v2, &new_id())
        .expect_err("Mount succeeded with a read-only state folder");
    assert!(
        e.contains(&sd),
        "the Err does not name the state folder {sd}: {e}"
    );
    let mp2 = d.mountpoint_of(&v2);
    let clean = poll(Duration::from_secs(10), || {
        (s3fs_of_bucket(&d, &b2).is_empty() && !is_mountpoint(&mp2)).then_some(())
    });
    assert!(
        clean.is_some(),
        "the refused Mount left s3fs {:?} / mount {}",
        s3fs_of_bucket(&d, &b2),
        is_mountpoint(&mp2)
    );
    let st = status(&d, &v2);
    assert!(holders(&st) == 0 && !mounted(&st), "{st}");
    assert_eq!(
        store_rows(&d.state_dir).expect("store"),
        before,
        "the store changed"
    );
    say(&format!("read-only state folder: Mount said: {e}"));

    drop(guard);
    // Writable again: everything works and the file follows.
    let b = new_id();
    mount_ok(&d, &v2, &b);
    assert_eq!(holders(&status(&d, &v2)), 1);
    unmount_ok(&d, &v2, &b);
    unmount_ok(&d, &v1, &a);
    wait_all_unmounted(&d);
    let (after, _) = store_rows(&d.state_dir).expect("store");
    assert!(
        after.values().all(|r| !r.contains(&a)),
        "the store still lists the unmounted ID: {after:?}"
    );
}

/// `chattr +i` on a folder and the files in it (writes fail even through open files); undone
/// on drop (also when the test fails).
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(dir: &Path) -> Immutable {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        paths.push(dir.to_path_buf());
        let guard = Immutable(paths);
        for p in &guard.0 {
            run("chattr", &["+i", p.to_str().unwrap()]);
        }
        guard
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn full_state_folder_refuses_changes_and_keeps_the_file() {
    let Some((s3, mut d)) = setup("full_state_folder_refuses_changes_and_keeps_the_file") else {
        return;
    };
    let b1 = new_bucket(s3, "fullstate");
    let v1 = unique_name("fullstate-v1");
    create_ok(&d, &v1, &[("bucket", &b1)]);
    d.stop();
    // Move the state onto a tiny tmpfs.
    let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&d.state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| (e.file_name().into(), fs::read(e.path()).unwrap()))
        .collect();
    let sd = d.state_dir.to_str().unwrap().to_string();
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", &sd],
    );
    let guard = StateMount(d.state_dir.clone());
    // s3fs stages open files in <state>/tmp and needs room there to start: give it a disk
    // of its own (the guard's lazy unmount takes it along).
    let tmp = d.state_dir.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let tmp_s = tmp.to_str().unwrap().to_string();
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=2g,mode=0700", "tmpfs", &tmp_s],
    );
    for (name, bytes) in &saved {
        fs::write(d.state_dir.join(name), bytes).unwrap();
        // As private as the daemon made them (it refuses an open key file).
        fs::set_permissions(d.state_dir.join(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let state_file = store_path(&d.state_dir);
    let before = store_rows(&d.state_dir).expect("store");
    d.restart();
    // The s3fs log folder exists before the disk is full (so that s3fs can start).
    let a = new_id();
    mount_ok(&d, &v1, &a);
    let after_mount = store_rows(&d.state_dir).expect("store");
    // Fill the disk.
    {
        let mut f = fs::File::create(d.state_dir.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        let mut n = 0;
        while f.write_all(&chunk).is_ok() {
            n += 1;
            assert!(n < 10_000, "a 512k tmpfs took more than 40 MB");
        }
        let _ = f.sync_all();
        // Also the last bytes a small write could use.
        while f.write_all(&[0u8; 1]).is_ok() {}
    }
    let e = d
        .mount(&v1, &new_id())
        .expect_err("Mount succeeded with a full state folder");
    assert!(
        e.contains(&state_file.display().to_string()),
        "the Err does not name the state file: {e}"
    );
    let st = status(&d, &v1);
    assert!(holders(&st) == 1 && mounted(&st), "{st}");
    assert_eq!(
        store_rows(&d.state_dir).expect("store"),
        after_mount,
        "the store changed on a full disk"
    );
    assert_ne!(before, after_mount);
    // Space again: the holder leaves and the file follows.
    fs::remove_file(d.state_dir.join("filler")).unwrap();
    unmount_ok(&d, &v1, &a);
    wait_all_unmounted(&d);
    d.stop();
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// 5. A damaged state file at start
// ---------------------------------------------------------------------------------------------

/// Files in the state folder whose names start with `prefix`.
fn kept_copies(d: &Daemon, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(&d.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with(prefix))
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}

/// Three volumes, one of them held by a mount; the daemon stopped.
fn three_volumes(s3: &S3Server, d: &mut Daemon, tag: &str) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..3 {
        let b = new_bucket(s3, tag);
        let v = unique_name(&format!("{tag}{i}"));
        create_ok(d, &v, &[("bucket", &b)]);
        names.push(v);
    }
    d.stop();
    names
}

/// The JSON state file of an earlier version, truncated, is imported as far as it can be read.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn truncated_state_file_serves_what_it_can_and_keeps_a_copy() {
    let Some((s3, mut d)) = setup("truncated_state_file_serves_what_it_can_and_keeps_a_copy")
    else {
        return;
    };
    let names = three_volumes(s3, &mut d, "trunc");
    let path = d.state_dir.join("volumes.json");
    let text = String::from_utf8(downgrade_state_folder(&d.state_dir)).unwrap();
    // The record that comes last in the file, cut in its middle.
    let (last_at, last) = names
        .iter()
        .map(|n| (text.find(&format!("\"{n}\"")).expect("name in state"), n))
        .max()
        .unwrap();
    let cut = last_at + (text.len() - last_at) / 2;
    let truncated = &text.as_bytes()[..cut];
    fs::write(&path, truncated).unwrap();

    d.restart();
    let listed = d.list_names();
    for n in &names {
        if n == last {
            assert!(
                !listed.contains(n),
                "the cut record {n} is listed: {listed:?}"
            );
        } else {
            assert!(
                listed.contains(n),
                "a complete record {n} was not served: {listed:?}\n{}",
                d.logs_tail(30)
            );
            assert!(d.status(n).is_ok());
        }
    }
    let copies = kept_copies(&d, "volumes.json.imported-");
    assert_eq!(copies.len(), 1, "copies of the damaged file: {copies:?}");
    assert_eq!(
        fs::read(&copies[0]).unwrap(),
        truncated,
        "the copy is not the damaged file"
    );
    assert!(!path.exists(), "the imported file was left in place");
    let said = lines_matching(&d, "damaged");
    assert!(
        said.iter()
            .any(|l| l.contains("ERROR") && l.contains(&copies[0].display().to_string())),
        "the log does not say the state file was damaged and where the copy is: {said:#?}\n{}",
        d.logs_tail(30)
    );
    assert!(
        said.iter().any(|l| l.contains("not valid JSON")),
        "the log does not say what could not be read: {said:#?}"
    );
    // The daemon works on: the readable volumes mount.
    let keep = names.iter().find(|n| *n != last).unwrap();
    let id = new_id();
    mount_ok(&d, keep, &id);
    unmount_ok(&d, keep, &id);
    wait_all_unmounted(&d);
}

/// A store that is no database at all: kept aside, the daemon starts on a new one.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn garbage_state_file_starts_empty_and_keeps_a_copy() {
    let Some((s3, mut d)) = setup("garbage_state_file_starts_empty_and_keeps_a_copy") else {
        return;
    };
    let names = three_volumes(s3, &mut d, "garbage");
    let path = store_path(&d.state_dir);
    let mut garbage = b"\x00\xffthis is not a state file {{{ \"volumes\": [".to_vec();
    garbage.extend(random_bytes(300));
    fs::write(&path, &garbage).unwrap();
    // The log too: it may hold every page (the daemon need not checkpoint before it ends).
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        fs::write(&wal, random_bytes(5000)).unwrap();
    }

    d.try_restart()
        .unwrap_or_else(|e| panic!("the daemon did not start on a garbage state file: {e}"));
    let listed = d.list_names();
    for n in &names {
        assert!(!listed.contains(n), "{n} listed from garbage: {listed:?}");
    }
    let copies: Vec<PathBuf> = kept_copies(&d, "state.db.corrupt-")
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(copies.len(), 1, "copies of the damaged store: {copies:?}");
    assert_eq!(fs::read(&copies[0]).unwrap(), garbage);
    let said = lines_matching(&d, "damaged");
    assert!(
        said.iter().any(
            |l| l.contains("could not be used") && l.contains(&copies[0].display().to_string())
        ),
        "the log does not say the store could not be read and where the copy is: {said:#?}\n{}",
        d.logs_tail(30)
    );
    // A new Create works and is in the new store; the copy stays.
    let b = new_bucket(s3, "garbage-new");
    let v = unique_name("garbage-new");
    create_ok(&d, &v, &[("bucket", &b)]);
    assert!(store_records(&d.state_dir).contains_key(&v));
    assert_eq!(fs::read(&copies[0]).unwrap(), garbage);
}

// ---------------------------------------------------------------------------------------------
// 6. The backends file changed or broken while volumes are mounted
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn backends_file_changed_while_mounted_old_mount_stays_new_mounts_follow() {
    if !prereqs("backends_file_changed_while_mounted_old_mount_stays_new_mounts_follow") {
        return;
    }
    let old = shared_s3();
    let new = S3Server::start_private();
    let d = Daemon::start(old);
    // The same bucket name on both servers: where the data lands tells which server is used.
    let b = new_bucket(old, "switch");
    new.s3().create_bucket(&b).unwrap();
    let v1 = unique_name("switch-v1");
    create_ok(&d, &v1, &[("bucket", &b)]);
    let a = new_id();
    let mp1 = mount_ok(&d, &v1, &a);
    fs::write(mp1.join("v1-before.txt"), b"old").unwrap();
    s3_poll(old, &b, "v1-before.txt", b"old", Duration::from_secs(15));
    let pid1 = s3fs_of_bucket(&d, &b);
    assert_eq!(pid1.len(), 1);

    d.write_backends(&[new.backend("default")]);
    let v2 = unique_name("switch-v2");
    // Create checks the bucket on the backend as configured now (it exists on both).
    create_ok(&d, &v2, &[("bucket", &b)]);
    let bb = new_id();
    let mp2 = mount_ok(&d, &v2, &bb);
    fs::write(mp2.join("v2.txt"), b"new").unwrap();
    s3_poll(&new, &b, "v2.txt", b"new", Duration::from_secs(15));
    assert_eq!(
        old.s3().get(&b, "v2.txt").unwrap(),
        None,
        "the new volume's data reached the old server"
    );
    // The existing mount is untouched: same s3fs, still the old server.
    fs::write(mp1.join("v1-after.txt"), b"old-after").unwrap();
    s3_poll(
        old,
        &b,
        "v1-after.txt",
        b"old-after",
        Duration::from_secs(15),
    );
    assert_eq!(new.s3().get(&b, "v1-after.txt").unwrap(), None);
    assert!(fs::read_dir(&mp1)
        .unwrap()
        .flatten()
        .all(|e| e.file_name() != "v2.txt"));
    let pids = s3fs_of_bucket(&d, &b);
    assert!(
        pids.contains(&pid1[0]) && pids.len() == 2,
        "expected the old s3fs {pid1:?} and one new: {pids:?}"
    );

    // A broken backends file: the last good configuration (the new server) stays in force.
    write_private_file(
        &d.config,
        "[backends.default\nendpoint = \"http://nowhere\"\n",
    );
    let b3 = new_bucket(&new, "switch3");
    let v3 = unique_name("switch-v3");
    create_ok(&d, &v3, &[("bucket", &b3)]);
    let c = new_id();
    let mp3 = mount_ok(&d, &v3, &c);
    fs::write(mp3.join("v3.txt"), b"v3").unwrap();
    s3_poll(&new, &b3, "v3.txt", b"v3", Duration::from_secs(15));
    let said = lines_matching(&d, "keeping the last good configuration");
    assert!(
        said.iter()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("toml")
                || l.contains("expected")),
        "the log does not say why the backends file is not used: {said:#?}\n{}",
        d.logs_tail(30)
    );
    // Mounts made under the earlier configurations still work.
    assert_eq!(fs::read(mp1.join("v1-before.txt")).unwrap(), b"old");
    assert_eq!(fs::read(mp2.join("v2.txt")).unwrap(), b"new");

    for (v, id) in [(&v1, &a), (&v2, &bb), (&v3, &c)] {
        unmount_ok(&d, v, id);
    }
    wait_all_unmounted(&d);
    drop(d);
    drop(new);
}

// ---------------------------------------------------------------------------------------------
// 7. Many clients racing
// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Pair {
    count: u64,
    busy: bool,
    /// Bumped when an operation on the pair starts and when it ends.
    epoch: u64,
}

#[derive(Default)]
struct VolModel {
    exists: bool,
    /// A Create or Remove of the volume is in flight.
    busy: bool,
    epoch: u64,
}

#[derive(Default)]
struct StressModel {
    pairs: HashMap<(usize, usize), Pair>,
    vols: Vec<VolModel>,
    problems: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl StressModel {
    fn sum(&self, v: usize) -> u64 {
        self.pairs
            .iter()
            .filter(|((vv, _), _)| *vv == v)
            .map(|(_, p)| p.count)
            .sum()
    }
    fn bump(&mut self, what: &'static str) {
        *self.counts.entry(what).or_insert(0) += 1;
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn stress_parallel_clients_keep_counts_and_one_s3fs_per_bucket() {
    let Some((s3, d)) = setup("stress_parallel_clients_keep_counts_and_one_s3fs_per_bucket") else {
        return;
    };
    const THREADS: usize = 16;
    const IDS: usize = 8;
    const RUN: Duration = Duration::from_secs(24);
    let bucket_a = new_bucket(s3, "stress-a");
    let bucket_b = new_bucket(s3, "stress-b");
    let bucket_c = new_bucket(s3, "stress-c");
    let vol_opts: Vec<Vec<(String, String)>> = vec![
        vec![("bucket".into(), bucket_a.clone())],
        vec![
            ("bucket".into(), bucket_a.clone()),
            ("prefix".into(), "p1".into()),
        ],
        vec![("bucket".into(), bucket_b.clone())],
        vec![
            ("bucket".into(), bucket_c.clone()),
            ("prefix".into(), "deep/p2".into()),
        ],
    ];
    let names: Vec<String> = (0..vol_opts.len())
        .map(|i| unique_name(&format!("stress-v{i}")))
        .collect();
    let buckets = [bucket_a.clone(), bucket_b.clone(), bucket_c.clone()];
    let bucket_vols: [Vec<usize>; 3] = [vec![0, 1], vec![2], vec![3]];
    let ids: Vec<String> = (0..IDS).map(|_| new_id()).collect();
    let model = Mutex::new(StressModel {
        vols: (0..names.len()).map(|_| VolModel::default()).collect(),
        ..Default::default()
    });
    for (v, n) in names.iter().enumerate() {
        let o: Vec<(&str, &str)> = vol_opts[v]
            .iter()
            .map(|(k, x)| (k.as_str(), x.as_str()))
            .collect();
        create_ok(&d, n, &o);
        model.lock().unwrap().vols[v].exists = true;
    }
    // Workers hold this for reading during each call; a checkpoint takes it for writing to see
    // the daemon at rest.
    let gate = RwLock::new(());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let max_s3fs = Mutex::new((0usize, String::new(), 0u64));
    let checkpoints = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();

    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (d, model, gate, stop, names, ids, vol_opts) =
                (&d, &model, &gate, &stop, &names, &ids, &vol_opts);
            scope.spawn(move || {
                let mut rng = Rng::new(&format!("stress worker {t}"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Poisoned: a checkpoint failed; its panic tells why.
                    let Ok(_g) = gate.read() else { return };
                    stress_step(d, &mut rng, model, names, ids, vol_opts);
                }
            });
        }
        // Sampler: never two s3fs for one bucket.
        let (d2, stop2, max2) = (&d, &stop, &max_s3fs);
        scope.spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let per = s3fs_per_bucket(d2);
                let mut m = max2.lock().unwrap();
                m.2 += 1;
                for (b, n) in per {
                    if n > m.0 {
                        *m = (n, b, m.2);
                    }
                }
                drop(m);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // A failed checkpoint panics: the workers must stop anyway, or the scope would wait
        // for them forever.
        let _stopper = StopFlag(&stop);
        // Checkpoints at rest every few seconds, then stop.
        while started.elapsed() < RUN {
            std::thread::sleep(Duration::from_secs(4));
            let _w = gate.write().unwrap();
            let m = model.lock().unwrap();
            check_stress_at_rest(&d, &m, &names, &buckets, &bucket_vols, "checkpoint");
            checkpoints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });

    let m = model.into_inner().unwrap();
    let (max, max_bucket, samples) = max_s3fs.into_inner().unwrap();
    say(&format!(
        "stress: {THREADS} threads, {:?}, operations {:?}, {} checkpoints, {samples} s3fs samples (max {max} per bucket)",
        started.elapsed(),
        m.counts,
        checkpoints.into_inner()
    ));
    assert!(
        m.problems.is_empty(),
        "problems seen during the run: {:#?}\n{}",
        m.problems,
        d.logs_tail(60)
    );
    assert!(
        max <= 1,
        "{max} s3fs for bucket {max_bucket} at once during the run"
    );
    check_stress_at_rest(&d, &m, &names, &buckets, &bucket_vols, "end");
    let total: u64 = m.counts.values().sum();
    assert!(total > 200, "too few operations: {:?}", m.counts);
    assert!(
        m.counts.get("mount-ok").copied().unwrap_or(0) > 50
            && m.counts.get("unmount-ok").copied().unwrap_or(0) > 50,
        "too few Mounts/Unmounts: {:?}",
        m.counts
    );

    // Unmount everything the callers hold.
    for ((v, i), p) in &m.pairs {
        for _ in 0..p.count {
            unmount_ok(&d, &names[*v], &ids[*i]);
        }
    }
    for (v, n) in names.iter().enumerate() {
        if m.vols[v].exists {
            let st = status(&d, n);
            assert!(holders(&st) == 0 && !mounted(&st), "{n}: {st}");
        }
    }
    wait_all_unmounted(&d);
    assert_mount_root_empty(&d);
}

/// Sets the flag when dropped (also while a failed check unwinds).
struct StopFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One random operation of a stress worker, recorded in the model.
fn stress_step(
    d: &Daemon,
    rng: &mut Rng,
    model: &Mutex<StressModel>,
    names: &[String],
    ids: &[String],
    vol_opts: &[Vec<(String, String)>],
) {
    let v = rng.below(names.len() as u64) as usize;
    if rng.chance(8) {
        // Create or Remove.
        let create = !model.lock().unwrap().vols[v].exists || rng.chance(30);
        let (snapshot, vepoch) = {
            let mut m = model.lock().unwrap();
            if m.vols[v].busy {
                return;
            }
            m.vols[v].busy = true;
            m.vols[v].epoch += 1;
            let held: Vec<((usize, usize), u64)> = m
                .pairs
                .iter()
                .filter(|((vv, _), p)| *vv == v && p.count > 0 && !p.busy)
                .map(|(k, p)| (*k, p.epoch))
                .collect();
            (held, m.vols[v].epoch)
        };
        let _ = vepoch;
        let r = if create {
            let o: Vec<(&str, &str)> = vol_opts[v]
                .iter()
                .map(|(k, x)| (k.as_str(), x.as_str()))
                .collect();
            d.create(&names[v], &o)
        } else {
            d.remove(&names[v])
        };
        let mut m = model.lock().unwrap();
        m.vols[v].busy = false;
        m.vols[v].epoch += 1;
        match (create, r) {
            (true, Ok(())) => {
                m.vols[v].exists = true;
                m.bump("create-ok");
            }
            (true, Err(e)) => {
                m.bump("create-err");
                m.problems.push(format!("Create {} failed: {e}", names[v]));
            }
            (false, Ok(())) => {
                m.bump("remove-ok");
                // Holders that neither started nor finished a call during the Remove held the
                // volume all along: the Remove must have been refused.
                let still: Vec<(usize, usize)> = snapshot
                    .iter()
                    .filter(|(k, e)| m.pairs.get(k).map(|p| p.epoch) == Some(*e))
                    .map(|(k, _)| *k)
                    .collect();
                if !still.is_empty() {
                    m.problems.push(format!(
                        "Remove {} succeeded while held by {still:?}",
                        names[v]
                    ));
                }
                let was = m.vols[v].exists;
                m.vols[v].exists = false;
                if !was {
                    m.problems.push(format!(
                        "Remove {} succeeded but it did not exist",
                        names[v]
                    ));
                }
            }
            (false, Err(e)) => {
                m.bump("remove-refused");
                let el = e.to_lowercase();
                if m.vols[v].exists && !(el.contains("in use") || el.contains("holder")) {
                    m.problems
                        .push(format!("Remove {} refused with an odd Err: {e}", names[v]));
                }
            }
        }
        return;
    }
    // Mount or Unmount of one (volume, ID) pair; calls on one pair are never concurrent, so
    // the model knows its count exactly.
    let roll = rng.below(100);
    let (i, mount, sure_exists, vepoch, first) = {
        let mut m = model.lock().unwrap();
        // Keep counts small, so that volumes often go from held to free and back (real
        // mounts and unmounts, and Removes that may succeed).
        let sum = m.sum(v);
        let mount = match sum {
            0 => roll < 60,
            1..=2 => roll < 45,
            _ => roll < 25,
        };
        let held: Vec<usize> = (0..ids.len())
            .filter(|i| m.pairs.get(&(v, *i)).map(|p| p.count > 0).unwrap_or(false))
            .collect();
        let i = if !mount && !held.is_empty() && !rng.chance(5) {
            held[rng.below(held.len() as u64) as usize]
        } else {
            rng.below(ids.len() as u64) as usize
        };
        let vm = &m.vols[v];
        let sure = vm.exists && !vm.busy;
        let ve = vm.epoch;
        let p = m.pairs.entry((v, i)).or_default();
        if p.busy {
            return;
        }
        p.busy = true;
        p.epoch += 1;
        (i, mount, sure, ve, sum == 0)
    };
    let r = if mount {
        d.mount(&names[v], &ids[i]).map(|_| ())
    } else {
        d.unmount(&names[v], &ids[i])
    };
    let mut m = model.lock().unwrap();
    let unchanged = m.vols[v].epoch == vepoch;
    let p = m.pairs.get_mut(&(v, i)).unwrap();
    p.busy = false;
    p.epoch += 1;
    let before = p.count;
    match (mount, r) {
        (true, Ok(())) => {
            p.count += 1;
            m.bump("mount-ok");
            if first {
                m.bump("mount-ok-of-a-free-volume");
            }
            if before > 0 {
                m.bump("mount-same-id-again");
            }
        }
        (true, Err(e)) => {
            m.bump("mount-err");
            if sure_exists && unchanged {
                m.problems.push(format!(
                    "Mount {} ID#{i} failed while the volume surely existed: {e}",
                    names[v]
                ));
            }
        }
        (false, Ok(())) => {
            if before > 0 {
                p.count -= 1;
                m.bump("unmount-ok");
                if m.sum(v) == 0 {
                    m.bump("unmount-ok-leaving-it-free");
                }
            } else {
                m.bump("unmount-unknown-id");
            }
        }
        (false, Err(e)) => {
            m.bump("unmount-err");
            m.problems
                .push(format!("Unmount {} ID#{i} failed: {e}", names[v]));
        }
    }
}

/// With no call in flight: counts as the callers hold them, mounted exactly when held, one
/// s3fs per bucket in use and none otherwise.
fn check_stress_at_rest(
    d: &Daemon,
    m: &StressModel,
    names: &[String],
    buckets: &[String],
    bucket_vols: &[Vec<usize>],
    when: &str,
) {
    let listed = d.list_names();
    for (v, n) in names.iter().enumerate() {
        let want = m.sum(v);
        if !m.vols[v].exists {
            assert!(!listed.contains(n), "{when}: removed {n} is still listed");
            assert_eq!(want, 0, "{when}: removed {n} but the callers hold {want}");
            continue;
        }
        assert!(listed.contains(n), "{when}: {n} is not listed");
        let st = status(d, n);
        assert_eq!(
            holders(&st),
            want,
            "{when}: {n} holders differ from what the callers hold: {st}\n{}",
            d.logs_tail(60)
        );
        let mp = d.mountpoint_of(n);
        assert_eq!(mounted(&st), want > 0, "{when}: {n}: {st}");
        assert_eq!(is_mountpoint(&mp), want > 0, "{when}: {n} mount point");
        if want > 0 {
            assert!(statvfs_ok(&mp), "{when}: {n} does not answer statvfs");
            assert_eq!(health(&st), "ok", "{when}: {n}: {st}");
        }
    }
    let mut last = String::new();
    let ok = poll(Duration::from_secs(10), || {
        for (b, bucket) in buckets.iter().enumerate() {
            let in_use = bucket_vols[b].iter().any(|v| m.sum(*v) > 0);
            let n = s3fs_of_bucket(d, bucket).len();
            if n != usize::from(in_use) {
                last = format!("bucket {bucket}: in use {in_use}, s3fs {n}");
                return None;
            }
        }
        Some(())
    });
    assert!(ok.is_some(), "{when}: {last}\n{}", d.logs_tail(40));
}

/// No mount, and no folder under the mount root except an empty `.s3fs`.
fn assert_mount_root_empty(d: &Daemon) {
    let left: Vec<String> = fs::read_dir(&d.mount_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".s3fs")
        .collect();
    assert!(left.is_empty(), "left under the mount root: {left:?}");
    let shared = d.mount_root.join(".s3fs");
    if shared.exists() {
        let left: Vec<String> = fs::read_dir(&shared)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "left under .s3fs: {left:?}");
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn racing_last_holder_unmounts_and_the_docker_cp_pattern() {
    let Some((s3, d)) = setup("racing_last_holder_unmounts_and_the_docker_cp_pattern") else {
        return;
    };
    const ROUNDS: usize = 12;
    let b = new_bucket(s3, "race");
    let v = unique_name("race-v");
    let w = unique_name("race-w");
    create_ok(&d, &v, &[("bucket", &b)]);
    create_ok(&d, &w, &[("bucket", &b), ("prefix", "w")]);
    let mp = d.mountpoint_of(&v);
    for round in 0..ROUNDS {
        let (x, y) = (new_id(), new_id());
        mount_ok(&d, &v, &x);
        mount_ok(&d, &v, &y);
        // docker cp: the same ID mounts again and unmounts once; the mount stays.
        mount_ok(&d, &v, &x);
        assert_eq!(holders(&status(&d, &v)), 3);
        unmount_ok(&d, &v, &x);
        assert!(
            is_mountpoint(&mp) && statvfs_ok(&mp),
            "round {round}: the docker cp Unmount unmounted the volume"
        );
        assert_eq!(holders(&status(&d, &v)), 2);
        // The two last holders leave at the same moment, while another volume of the same
        // s3fs is mounted (odd rounds) or not (even rounds).
        let z = new_id();
        if round % 2 == 1 {
            mount_ok(&d, &w, &z);
        }
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            for id in [&x, &y] {
                let (d, v, barrier) = (&d, &v, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    unmount_ok(d, v, id);
                });
            }
        });
        let st = status(&d, &v);
        assert!(
            holders(&st) == 0 && !mounted(&st) && !is_mountpoint(&mp),
            "round {round}: after both last holders left: {st}, mounted {}",
            is_mountpoint(&mp)
        );
        let want = usize::from(round % 2 == 1);
        let n = poll(Duration::from_secs(10), || {
            let n = s3fs_of_bucket(&d, &b).len();
            (n == want).then_some(n)
        });
        assert!(
            n.is_some(),
            "round {round}: s3fs of {b}: {:?}, want {want}",
            s3fs_of_bucket(&d, &b)
        );
        // The last Unmount racing a new first Mount: the Mount must end up with a live mount.
        let (p, q) = (new_id(), new_id());
        mount_ok(&d, &v, &p);
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            let (d1, v1, b1, p1) = (&d, &v, &barrier, &p);
            s.spawn(move || {
                b1.wait();
                unmount_ok(d1, v1, p1);
            });
            let (d2, v2, b2, q2) = (&d, &v, &barrier, &q);
            s.spawn(move || {
                b2.wait();
                d2.mount(v2, q2).unwrap_or_else(|e| {
                    panic!("round {round}: Mount racing the last Unmount: {e}")
                });
            });
        });
        let st = status(&d, &v);
        assert!(
            holders(&st) == 1 && mounted(&st) && is_mountpoint(&mp) && statvfs_ok(&mp),
            "round {round}: a Mount racing the last Unmount: {st}, mounted {}, statvfs {}",
            is_mountpoint(&mp),
            statvfs_ok(&mp)
        );
        fs::read_dir(&mp).unwrap();
        assert_eq!(s3fs_of_bucket(&d, &b).len(), 1);
        unmount_ok(&d, &v, &q);
        if round % 2 == 1 {
            unmount_ok(&d, &w, &z);
        }
        wait_all_unmounted(&d);
    }
    assert_mount_root_empty(&d);
}
