//! The store under the real daemon: an upgrade from the JSON state file with live mounts, one
//! daemon per state folder, SIGKILL during a burst of Creates and Mounts, and a power cut of
//! the state's disk (ext4 on a loop device, shut down without flushing: what was not synced is
//! lost, as in a power cut).
//!
//! Every test talks to the real `bai-s3 serve` over its socket, with real s3fs and SeaweedFS.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Upgrade from the JSON state file
// ---------------------------------------------------------------------------------------------

/// A state folder as the release before the database left it (its `volumes.json`, written by
/// that release's own format, with holders and live mounts): imported, kept aside, the same
/// volumes served and the same s3fs re-adopted; the old holders' Unmounts still unmount.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_state_folder_of_the_json_release_is_imported_with_its_live_mounts() {
    let Some((s3, mut d)) = setup("a_state_folder_of_the_json_release_is_imported") else {
        return;
    };
    let b = new_bucket(s3, "upgrade");
    let whole = unique_name("upgrade-whole");
    let sub = unique_name("upgrade-sub");
    let idle = unique_name("upgrade-idle");
    create_ok(&d, &whole, &[("bucket", &b), ("uid", "1000")]);
    create_ok(
        &d,
        &sub,
        &[("bucket", &b), ("prefix", "vf/1"), ("uid", "1000")],
    );
    create_ok(&d, &idle, &[("bucket", &b), ("ro", "true")]);
    let (x, y, z) = (new_id(), new_id(), new_id());
    mount_ok(&d, &whole, &x);
    mount_ok(&d, &whole, &x);
    mount_ok(&d, &whole, &y);
    let mp = mount_ok(&d, &sub, &z);
    fs::write(mp.join("before"), b"upgrade").unwrap();
    let s3fs = d.s3fs_pids();
    assert_eq!(s3fs.len(), 1, "one s3fs for the bucket: {s3fs:?}");
    let before = store_records(&d.state_dir);

    d.kill9();
    let old = downgrade_state_folder(&d.state_dir);
    assert!(!store_path(&d.state_dir).exists());
    d.restart();

    let st = wait_for(
        "the upgraded daemon to adopt the mount",
        Duration::from_secs(20),
        || {
            let st = status(&d, &whole);
            (mounted(&st) && mounted(&status(&d, &sub))).then_some(st)
        },
    );
    assert_eq!(holders(&st), 3, "{st}");
    let st = status(&d, &sub);
    assert!(holders(&st) == 1 && mounted(&st), "{st}");
    let st = status(&d, &idle);
    assert!(holders(&st) == 0 && !mounted(&st), "{st}");
    assert_eq!(st["ro"], json!(true), "{st}");
    assert_eq!(d.s3fs_pids(), s3fs, "the live s3fs was not re-adopted");
    assert_eq!(fs::read(mp.join("before")).unwrap(), b"upgrade");
    // Everything of every record is in the new store.
    assert_eq!(store_records(&d.state_dir), before);
    let kept: Vec<PathBuf> = fs::read_dir(&d.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("volumes.json.imported-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        fs::read(&kept[0]).unwrap(),
        old,
        "the old file is not kept as it was"
    );
    assert!(!d.state_dir.join("volumes.json").exists());

    // Started once more: not imported again, same volumes.
    d.stop();
    d.restart();
    assert_eq!(holders(&status(&d, &whole)), 3);
    for (v, id) in [(&whole, &x), (&whole, &x), (&whole, &y), (&sub, &z)] {
        unmount_ok(&d, v, id);
    }
    wait_all_unmounted(&d);
    let listed = d.list_names();
    for v in [&whole, &sub, &idle] {
        assert!(listed.contains(v), "{v} not listed: {listed:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// One daemon per state folder
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_second_daemon_on_the_same_state_folder_is_refused_naming_the_first() {
    let Some((_s3, d)) = setup("a_second_daemon_on_the_same_state_folder_is_refused") else {
        return;
    };
    let other = d.dir.join("second");
    fs::create_dir_all(&other).unwrap();
    let sock = other.join("second.sock");
    let child = serve_command(&sock, &d.state_dir, &other.join("volumes"), &d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon ran: {stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        t.elapsed()
    );
    let first = d.pid().unwrap();
    assert!(
        stderr.contains(&format!("pid {first}"))
            && stderr.contains(&d.state_dir.display().to_string()),
        "the refusal does not name the first daemon's pid {first} and the folder: {stderr}"
    );
    assert!(!sock.exists(), "the second daemon made its socket");
    say(&format!("second daemon said: {}", stderr.trim()));
    // The first one is untouched.
    assert!(d.list().is_ok());
    assert!(store_rows(&d.state_dir).is_some());
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during a burst of Creates and Mounts
// ---------------------------------------------------------------------------------------------

/// What the callers know.
#[derive(Default)]
struct Burst {
    /// Volumes whose Create was answered OK (or found after an unanswered one).
    created: BTreeSet<String>,
    /// Mounts answered OK and not unmounted, per volume and ID.
    held: BTreeMap<String, BTreeMap<String, u64>>,
    /// Calls without an answer: (method, volume, ID).
    unknown: Vec<(&'static str, String, String)>,
    /// Errors answered by a live daemon: each is a failure.
    errors: Vec<String>,
    answered: u64,
}

/// Waits until `n` more Creates than now have been answered OK, for at most 60 s (never a
/// panic: the clients run until the kill that follows, and the counts are checked after it).
fn wait_for_creates(model: &Mutex<Burst>, n: usize) {
    let want = model.lock().unwrap().created.len() + n;
    let _ = poll(Duration::from_secs(60), || {
        (model.lock().unwrap().created.len() >= want).then_some(())
    });
}

/// One client thread: Create a volume, Mount it (once or twice), next one, until the daemon
/// stops answering.
fn burst_client(d: &Daemon, bucket: &str, tag: &str, m: &Mutex<Burst>, stop_on_err: bool) {
    for n in 0.. {
        let vol = format!("{tag}-{n:03}");
        match answer(
            &d.socket,
            "VolumeDriver.Create",
            &json!({"Name": vol, "Opts": {"bucket": bucket}}),
        ) {
            Answer::Ok => {
                let mut m = m.lock().unwrap();
                m.created.insert(vol.clone());
                m.answered += 1;
            }
            Answer::Err(e) => {
                let mut m = m.lock().unwrap();
                m.unknown.push(("Create", vol.clone(), String::new()));
                if !stop_on_err {
                    m.errors.push(format!("Create {vol}: {e}"));
                }
                return;
            }
            Answer::None(_) => {
                m.lock()
                    .unwrap()
                    .unknown
                    .push(("Create", vol, String::new()));
                return;
            }
        }
        for k in 0..(1 + n % 2) {
            let id = format!("{tag}-id{k}");
            match answer(
                &d.socket,
                "VolumeDriver.Mount",
                &json!({"Name": vol, "ID": id}),
            ) {
                Answer::Ok => {
                    let mut m = m.lock().unwrap();
                    *m.held
                        .entry(vol.clone())
                        .or_default()
                        .entry(id)
                        .or_insert(0) += 1;
                    m.answered += 1;
                }
                Answer::Err(e) => {
                    let mut m = m.lock().unwrap();
                    m.unknown.push(("Mount", vol.clone(), id));
                    if !stop_on_err {
                        m.errors.push(format!("Mount {vol}: {e}"));
                    }
                    return;
                }
                Answer::None(_) => {
                    m.lock().unwrap().unknown.push(("Mount", vol.clone(), id));
                    return;
                }
            }
        }
        if n >= 40 {
            return;
        }
    }
}

/// Every listed volume with its holders (List names them; Get gives their Status).
fn listed_holders(d: &Daemon) -> BTreeMap<String, u64> {
    d.list()
        .unwrap_or_else(|e| panic!("List: {e}"))
        .iter()
        .map(|v| {
            let name = v["Name"].as_str().unwrap_or("").to_string();
            let held = d
                .status(&name)
                .ok()
                .and_then(|st| st["holders"].as_u64())
                .unwrap_or(u64::MAX);
            (name, held)
        })
        .collect()
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn daemon_killed_during_a_burst_of_creates_and_mounts_loses_nothing_acknowledged() {
    let Some((s3, mut d)) = setup("daemon_killed_during_a_burst_of_creates_and_mounts") else {
        return;
    };
    const KILLS: usize = 8;
    const CLIENTS: usize = 3;
    let bucket = new_bucket(s3, "burst");
    let mut rng = Rng::new("burst");
    let model = Mutex::new(Burst::default());
    let mut in_flight = 0;
    for k in 0..KILLS {
        let pid = d.pid().expect("running");
        std::thread::scope(|scope| {
            for c in 0..CLIENTS {
                let (d, bucket, model) = (&d, &bucket, &model);
                scope.spawn(move || {
                    burst_client(d, bucket, &format!("burst{k}-c{c}"), model, false)
                });
            }
            // The kill point: once this round has had a few Creates answered (a loaded machine
            // answers slower), then a random while more.
            wait_for_creates(&model, 3);
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            let _ = sigkill(pid);
        });
        d.kill9();
        d.restart();
        let listed = listed_holders(&d);
        let mut m = model.lock().unwrap();
        assert!(
            m.errors.is_empty(),
            "a live daemon answered errors: {:?}",
            m.errors
        );
        // Resolve the unanswered calls from what the daemon says now.
        for (method, vol, id) in std::mem::take(&mut m.unknown) {
            in_flight += 1;
            let acked: u64 = m.held.get(&vol).map(|h| h.values().sum()).unwrap_or(0);
            match (method, listed.get(&vol)) {
                ("Create", Some(_)) => {
                    m.created.insert(vol);
                }
                ("Create", None) => {}
                ("Mount", Some(&h)) if h == acked + 1 => {
                    *m.held.entry(vol).or_default().entry(id).or_insert(0) += 1;
                }
                ("Mount", Some(&h)) if h == acked => {}
                other => panic!("kill {k}: unanswered {method} of {vol}: listed as {other:?}, callers hold {acked}"),
            }
        }
        for v in &m.created {
            let want: u64 = m.held.get(v).map(|h| h.values().sum()).unwrap_or(0);
            match listed.get(v) {
                Some(&h) => assert_eq!(h, want, "kill {k}: holders of {v}"),
                None => panic!("kill {k}: the acknowledged Create of {v} is lost"),
            }
        }
        for v in listed.keys() {
            assert!(
                m.created.contains(v),
                "kill {k}: {v} listed but never created"
            );
        }
    }
    let m = model.into_inner().unwrap();
    say(&format!(
        "burst: {KILLS} kills, {} calls answered, {in_flight} in flight at a kill, {} volumes",
        m.answered,
        m.created.len()
    ));
    assert!(
        m.created.len() >= 3 * KILLS,
        "too few Creates: {}",
        m.created.len()
    );
    // Every held volume mounted again (re-adopted), then unmounted by its holders.
    for (v, ids) in &m.held {
        for (id, n) in ids {
            for _ in 0..*n {
                unmount_ok(&d, v, id);
            }
        }
    }
    wait_all_unmounted(&d);
}

// ---------------------------------------------------------------------------------------------
// A power cut of the state's disk
// ---------------------------------------------------------------------------------------------

/// ext4 on a loop device mounted over a folder; detached on drop (also when a test fails).
struct LoopFs {
    image: PathBuf,
    at: PathBuf,
}

impl LoopFs {
    fn make(image: &Path, at: &Path) -> LoopFs {
        let run = |cmd: &str, args: &[&str]| {
            let out = Command::new(cmd).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        fs::File::create(image).unwrap().set_len(64 << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let fs = LoopFs {
            image: image.to_path_buf(),
            at: at.to_path_buf(),
        };
        fs.mount();
        fs
    }

    fn mount(&self) {
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(&self.at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::set_permissions(
            &self.at,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
    }

    /// The power cut: the file system stops at once, nothing more reaches its disk, and what
    /// was not synced (data, metadata, its journal's tail) is lost (`EXT4_IOC_SHUTDOWN` with
    /// `EXT4_GOING_FLAGS_NOLOGFLUSH`, as xfstests simulates crashes).
    fn cut(&self) {
        const EXT4_IOC_SHUTDOWN: u64 = 0x8004_587d; // _IOR('X', 125, __u32)
        const NOLOGFLUSH: u32 = 2;
        let dir = fs::File::open(&self.at).unwrap();
        let flags = NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32 from the pointer, which points at a live u32; the fd
        // is an open directory of the file system to shut down.
        let r = unsafe { nix::libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags) };
        assert_eq!(
            r,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }

    /// After the cut: detach, and mount again what the disk holds (the journal is replayed).
    /// Only once nothing holds a file of it open (a lazy detach would keep the shut-down
    /// file system alive, and the next mount of the image would get it back).
    fn remount(&self) {
        let done = poll(Duration::from_secs(20), || {
            nix::mount::umount2(&self.at, nix::mount::MntFlags::empty()).ok()
        });
        assert!(done.is_some(), "the cut file system stays busy");
        self.mount();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn power_cut_prereqs(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Path::new("/dev/loop-control").exists() {
        missing.push("no loop devices (/dev/loop-control)".to_string());
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        missing.push("mkfs.ext4 is missing (e2fsprogs)".to_string());
    }
    require(test, &missing)
}

/// Power cuts at random points of a burst of Creates, Mounts and Removes: every Create and
/// Remove answered before the cut is there after it (definitions), and the holders of the boot
/// before the cut are gone. The reboot that follows a power cut is emulated by giving the store
/// another boot id (the kernel's cannot change without a reboot); the mounts and s3fs that a
/// power cut ends are ended by the test.
#[test]
#[cfg_attr(
    not(all(bai_s3_integration, bai_s3_loop)),
    ignore = "needs root, FUSE, s3fs, SeaweedFS, loop devices, mkfs.ext4"
)]
fn power_cut_of_the_state_disk_loses_no_acknowledged_create_or_remove() {
    const TEST: &str = "power_cut_of_the_state_disk_loses_no_acknowledged_create_or_remove";
    if !prereqs(TEST) || !power_cut_prereqs(TEST) {
        return;
    }
    let Some((s3, mut d)) = setup(TEST) else {
        return;
    };
    d.stop();
    fs::remove_dir_all(&d.state_dir).unwrap();
    fs::create_dir_all(&d.state_dir).unwrap();
    let disk = LoopFs::make(&d.dir.join("state.img"), &d.state_dir);
    d.restart();
    let bucket = new_bucket(s3, "powercut");
    let mut rng = Rng::new("power cut");
    let mut created: BTreeMap<String, Value> = BTreeMap::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    const CUTS: usize = 4;
    for k in 0..CUTS {
        let model = Mutex::new(Burst::default());
        // Remove some of the earlier volumes (unheld: the cut before dropped their holders).
        let olds: Vec<String> = created.keys().cloned().collect();
        let mut removals = Vec::new();
        for v in olds.iter().filter(|_| rng.below(3) == 0) {
            if let Answer::Ok = answer(&d.socket, "VolumeDriver.Remove", &json!({"Name": v})) {
                removals.push(v.clone());
            }
        }
        let pid = d.pid().expect("running");
        std::thread::scope(|scope| {
            for c in 0..2 {
                let (d, bucket, model) = (&d, &bucket, &model);
                scope.spawn(move || burst_client(d, bucket, &format!("cut{k}-c{c}"), model, true));
            }
            wait_for_creates(&model, 2);
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            disk.cut();
            let _ = sigkill(pid);
        });
        d.kill9();
        // The rest of the power cut: every s3fs and mount gone.
        for p in d.s3fs_pids() {
            let _ = sigkill(p);
        }
        wait_for("the s3fs to end", Duration::from_secs(20), || {
            d.s3fs_pids().is_empty().then_some(())
        });
        let mut mounts: Vec<PathBuf> = d.mounts().into_iter().map(|m| m.mount_point).collect();
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        disk.remount();
        {
            let c = rusqlite::Connection::open(store_path(&d.state_dir)).unwrap();
            c.execute(
                "UPDATE meta SET value = 'the boot before the power cut' WHERE key = 'boot_id'",
                [],
            )
            .unwrap();
        }
        d.restart();
        let m = model.into_inner().unwrap();
        for v in m.created {
            created.insert(v, json!({"bucket": bucket}));
        }
        for v in &removals {
            created.remove(v);
            removed.insert(v.clone());
        }
        let listed = listed_holders(&d);
        for v in created.keys() {
            let st = d
                .status(v)
                .unwrap_or_else(|e| panic!("cut {k}: acknowledged Create of {v} lost: {e}"));
            assert_eq!(st["bucket"], json!(bucket), "cut {k}: {v}: {st}");
            assert!(
                holders(&st) == 0 && !mounted(&st),
                "cut {k}: {v} still held: {st}"
            );
        }
        for v in &removed {
            assert!(
                !listed.contains_key(v),
                "cut {k}: acknowledged Remove of {v} undone"
            );
        }
        // A Create whose answer the cut took away may be there or not; adopt what is there.
        for (v, h) in &listed {
            assert_eq!(*h, 0, "cut {k}: {v} has holders of the boot before");
            if !created.contains_key(v) {
                assert!(
                    m.unknown
                        .iter()
                        .any(|(method, name, _)| *method == "Create" && name == v),
                    "cut {k}: {v} is listed but was never created"
                );
                created.insert(v.clone(), json!({"bucket": bucket}));
            }
        }
        assert!(
            d.logs().contains("holders of that boot are dropped"),
            "the restarted daemon did not see a new boot"
        );
        say(&format!(
            "power cut {k}: {} calls answered before it, {} volumes, {} removed",
            m.answered,
            created.len(),
            removed.len()
        ));
    }
    // Every acknowledged Create counts, also of the volumes removed since.
    assert!(
        created.len() + removed.len() >= CUTS * 2,
        "too few Creates before the cuts: {} kept, {} removed",
        created.len(),
        removed.len()
    );
    wait_all_unmounted(&d);
    d.stop();
    drop(disk);
}
