//! Many clients racing on a few volumes: counts kept, one s3fs per bucket; the last holders
//! leaving at once, the `docker cp` pattern, and a last Unmount meeting a first Mount.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::{Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::s3fs_of_bucket;
use crate::support::*;

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
