//! A running container's mount is never taken away by bai-s3: a restart while the backends file
//! is broken, a slow s3fs, a Mount that times out on a stalled store, a wedged s3fs. Each test
//! keeps a writer with a file open in the volume through the event (as a container's job
//! would), and checks that its writes after the event succeed and that what it fsync'd is in
//! the bucket.
//!
//! Every test talks to the real `bai-s3 serve` over its socket, with real s3fs and SeaweedFS.
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::stall::StallProxy;
use support::*;

/// A process-like writer: one file held open in the volume, a line written and fsync'd every
/// 50 ms, every error kept.
struct Writer {
    lines: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let mut f = fs::File::create(path)
            .unwrap_or_else(|e| panic!("writer: create {}: {e}", path.display()));
        let lines = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, e, s) = (lines.clone(), errors.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let n = l.load(Ordering::Acquire);
                match f
                    .write_all(format!("line {n}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                {
                    Ok(()) => {
                        l.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(err) => e.lock().unwrap().push(format!("line {n}: {err}")),
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Writer {
            lines,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `more` further lines were written and fsync'd.
    fn wait_more(&self, more: usize, what: &str) {
        let want = self.lines.load(Ordering::Acquire) + more;
        let got = poll(Duration::from_secs(30), || {
            (self.lines.load(Ordering::Acquire) >= want).then_some(())
        });
        assert!(
            got.is_some(),
            "{what}: the writer got no further ({} lines; errors: {:?})",
            self.lines.load(Ordering::Acquire),
            self.errors.lock().unwrap()
        );
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{what}: the writer saw errors: {errors:?}"
        );
    }

    /// Stops, closes the file, and returns how many lines were written and fsync'd.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the writer saw errors: {errors:?}");
        self.lines.load(Ordering::Acquire)
    }
}

/// Every one of the writer's `n` lines is in the object.
fn assert_lines_in_bucket(s3: &S3Server, bucket: &str, key: &str, n: usize) {
    let body = poll(Duration::from_secs(20), || {
        let b = s3.s3().get(bucket, key).ok().flatten()?;
        (String::from_utf8_lossy(&b).lines().count() >= n).then_some(b)
    })
    .unwrap_or_else(|| panic!("s3://{bucket}/{key} does not hold the writer's {n} lines"));
    let text = String::from_utf8_lossy(&body);
    for i in 0..n {
        assert!(
            text.contains(&format!("line {i}\n")),
            "line {i} missing from s3://{bucket}/{key}"
        );
    }
}

fn wait_adopted(d: &Daemon, vol: &str, holders_want: u64) -> serde_json::Value {
    poll(Duration::from_secs(20), || {
        let st = d.status(vol).ok()?;
        (mounted(&st) && holders(&st) == holders_want).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "{vol} was not adopted after the restart: {:?}\n{}",
            d.status(vol),
            d.logs_tail(60)
        )
    })
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_restart_with_the_backends_file_broken_keeps_live_mounts_and_their_writers() {
    let Some((s3, mut d)) = setup("a_restart_with_the_backends_file_broken_keeps_live_mounts")
    else {
        return;
    };
    let bucket = new_bucket(s3, "brk");
    let vol = unique_name("brk");
    create_ok(&d, &vol, &[("bucket", &bucket), ("prefix", "work")]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1);
    let writer = Writer::start(&mp.join("job.log"));
    writer.wait_more(3, "before any restart");

    type Break = fn(&Daemon);
    let breakages: [(&str, Break); 3] = [
        ("a backends file others can read (chmod 644)", |d| {
            fs::set_permissions(&d.config, fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("a syntax error in the backends file", |d| {
            write_private_file(&d.config, "[backends.default\nendpoint = \n")
        }),
        ("the volume's backend removed from the file", |d| {
            write_private_file(&d.config, "")
        }),
    ];
    for (what, break_it) in breakages {
        d.kill9();
        break_it(&d);
        d.restart();
        let st = wait_adopted(&d, &vol, 1);
        assert_eq!(health(&st), "ok", "{what}: {st}");
        assert!(
            st.get("problem")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains("default")),
            "{what}: Get says why a new mount would fail: {st}"
        );
        assert_eq!(d.s3fs_pids(), pids, "{what}: the same s3fs serves on");
        assert!(is_mountpoint(&mp), "{what}: the bind is still there");
        writer.wait_more(3, what);
        // A second container on the live mount needs no backend; its Unmount is answered.
        let id2 = new_id();
        assert_eq!(mount_ok(&d, &vol, &id2), mp, "{what}");
        unmount_ok(&d, &vol, &id2);
        assert!(
            is_mountpoint(&mp),
            "{what}: the first holder keeps the mount"
        );
        d.write_backends(&[s3.backend("default")]);
    }
    let n = writer.finish();
    unmount_ok(&d, &vol, &id);
    assert!(!is_mountpoint(&mp));
    assert_lines_in_bucket(s3, &bucket, "work/job.log", n);
    d.remove(&vol).unwrap();
}

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
    let n = writer.finish();
    unmount_ok(&d, &vol, &id);
    assert_lines_in_bucket(s3, &bucket, "job.log", n);
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

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_mount_timed_out_on_a_stalled_store_leaves_nothing_and_poisons_nothing() {
    if !prereqs("a_mount_timed_out_on_a_stalled_store_leaves_nothing") {
        return;
    }
    let s3 = shared_s3();
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = StallProxy::start(&upstream, "stallhere");
    let mut backend = s3.backend("default");
    backend.endpoint = proxy.endpoint.clone();
    let d = Daemon::start_with(&[backend], &["--mount-timeout", "5"]);
    let bucket = new_bucket(s3, "stl");
    let (vp, vw) = (unique_name("stlp"), unique_name("stlw"));
    create_ok(
        &d,
        &vp,
        &[("bucket", &bucket), ("prefix", "stallhere/deep")],
    );
    create_ok(&d, &vw, &[("bucket", &bucket)]);

    proxy.stall(true);
    let t = Instant::now();
    let err = d
        .mount(&vp, &new_id())
        .expect_err("the Mount on a stalled store fails");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(9), "the Mount took {took:?}");
    assert!(err.contains("within 5 s"), "{err}");
    // Nothing is left: no s3fs, no mount, no folder or file in any mount folder.
    poll(Duration::from_secs(10), || {
        d.s3fs_pids().is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("an s3fs is left: {:?}\n{}", d.s3fs_pids(), d.logs_tail(40)));
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    let shared = d.mount_root.join(".s3fs");
    if let Ok(rd) = fs::read_dir(&shared) {
        for e in rd.flatten() {
            let inside: Vec<_> = fs::read_dir(e.path())
                .map(|r| r.flatten().map(|x| x.path()).collect())
                .unwrap_or_default();
            assert!(
                inside.is_empty(),
                "left in {}: {inside:?}",
                e.path().display()
            );
        }
    }
    assert!(
        !d.mountpoint_of(&vp).exists(),
        "the mount point folder is left"
    );

    // The bucket is not poisoned: once the store answers, its volumes mount.
    proxy.stall(false);
    let id = new_id();
    let mp = mount_ok(&d, &vw, &id);
    fs::write(mp.join("after.txt"), b"ok").unwrap();
    unmount_ok(&d, &vw, &id);
    assert_eq!(
        s3.s3().get(&bucket, "after.txt").unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    for v in [&vp, &vw] {
        d.remove(v).unwrap();
    }
}

/// A process of uid 65534 (nobody) that dresses itself up as the s3fs of a shared mount: it
/// overwrites its own argv (through /proc/self/mem, as any program may) to `s3fs <path>`.
/// `watch`: once an s3fs mount appears below `target` (a prefix), it names that mount (so it
/// was started before the real s3fs, with a lower PID). `respawn`: it names `target` at once
/// and keeps a child dressed alike, forking a new one whenever the child dies. Each ends by
/// itself once `stop` exists; Drop ends them all.
struct Impostor {
    child: std::process::Child,
    stop: std::path::PathBuf,
}

const IMPOSTOR: &str = r#"
import os, sys, time
mode, target, stop = sys.argv[1], sys.argv[2], sys.argv[3]
def rewrite(args):
    f = open("/proc/self/stat").read()
    fields = f[f.rindex(")") + 2:].split()
    start, end = int(fields[45]), int(fields[46])
    new = b"\0".join(a.encode() for a in args) + b"\0"
    with open("/proc/self/mem", "r+b", buffering=0) as m:
        m.seek(start)
        m.write(new + b"\0" * (end - start - len(new)))
if mode == "watch":
    while not os.path.exists(stop):
        found = [l.split(" ")[4] for l in open("/proc/self/mountinfo")
                 if " - fuse.s3fs " in l and l.split(" ")[4].startswith(target)]
        if found:
            rewrite(["s3fs", found[0]])
            break
        time.sleep(0.02)
    while not os.path.exists(stop):
        time.sleep(0.05)
else:
    rewrite(["s3fs", target])
    while not os.path.exists(stop):
        pid = os.fork()
        if pid == 0:
            while not os.path.exists(stop):
                time.sleep(0.05)
            os._exit(0)
        os.waitpid(pid, 0)
"#;

impl Impostor {
    fn start(mode: &str, target: &Path) -> Impostor {
        let stop = std::env::temp_dir().join(format!("{}.stop", unique_name("imp")));
        // Long padding: the argv area must hold `s3fs <path>`.
        let pad = "x".repeat(400);
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", IMPOSTOR, mode])
            .arg(target)
            .arg(&stop)
            .arg(pad)
            .uid(NOBODY)
            .gid(NOBODY)
            .env_clear()
            .spawn()
            .expect("start the impostor (python3 as nobody)");
        Impostor { child, stop }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the process `pid` (this impostor or its child) names `path` as s3fs does;
    /// it runs as nobody.
    fn wait_dressed(pid: i32, path: &Path) {
        assert_eq!(uid_of(pid), Some((NOBODY, NOBODY)), "the impostor's uid");
        let want = vec!["s3fs".to_string(), path.display().to_string()];
        poll(Duration::from_secs(20), || {
            (cmdline(pid) == want).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "impostor {pid} never named {}: {:?}",
                path.display(),
                cmdline(pid)
            )
        });
    }

    /// Its live children (the respawned ones).
    fn children(&self) -> Vec<i32> {
        all_pids()
            .into_iter()
            .filter(|p| ppid(*p) == Some(self.pid()) && process_alive(*p))
            .collect()
    }

    /// Lets it end by itself; its exit status (a signal from anyone shows here).
    fn finish(mut self) -> std::process::ExitStatus {
        fs::write(&self.stop, b"").unwrap();
        let st = poll(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        st.unwrap_or_else(|| panic!("the impostor did not end after its stop file"))
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = fs::write(&self.stop, b"");
        if self.child.try_wait().ok().flatten().is_none() {
            for c in self.children() {
                let _ = sigkill(c);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.stop);
    }
}

/// Real and effective uid of `pid`.
fn uid_of(pid: i32) -> Option<(u32, u32)> {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = st.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|x| x.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// The daemon's s3fs processes: root's, among those that name its mount root.
fn root_s3fs(d: &Daemon) -> Vec<i32> {
    d.s3fs_pids()
        .into_iter()
        .filter(|p| uid_of(*p) == Some((0, 0)))
        .collect()
}

/// The shared s3fs mount that the volume mounted at `mp` is a view of.
fn shared_mount_of(d: &Daemon, mp: &Path) -> std::path::PathBuf {
    let dev = |p: &Path| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f.len() > 4 && Path::new(&f[4]) == p)
            .map(|f| f[2].clone())
            .next_back()
    };
    let want = dev(mp).expect("the volume is mounted");
    let shared = d.mount_root.join(".s3fs");
    fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| dev(p).as_deref() == Some(want.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "no shared mount in {} has the device {want}",
                shared.display()
            )
        })
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn an_argv_rewriting_impostor_of_another_uid_is_never_adopted_nor_signalled() {
    let Some((s3, mut d)) = setup_with(
        "an_argv_rewriting_impostor_of_another_uid_is_never_adopted_nor_signalled",
        &["--health-interval", "1", "--mount-timeout", "10"],
    ) else {
        return;
    };
    let bucket = new_bucket(s3, "imp");
    let vol = unique_name("imp");
    create_ok(&d, &vol, &[("bucket", &bucket)]);
    // Started before the real s3fs: its PID is lower, the one an argv search found first.
    let impostor = Impostor::start("watch", &d.mount_root.join(".s3fs"));
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let shared = shared_mount_of(&d, &mp);
    Impostor::wait_dressed(impostor.pid(), &shared);
    let real = root_s3fs(&d);
    assert_eq!(real.len(), 1);
    assert!(
        impostor.pid() < real[0],
        "the impostor runs with the lower PID"
    );
    let writer = Writer::start(&mp.join("job.log"));
    writer.wait_more(3, "before the restart");

    d.kill9();
    d.restart();
    wait_adopted(&d, &vol, 1);
    assert!(
        d.logs().contains(&format!("pid={}", real[0])),
        "the real s3fs was adopted\n{}",
        d.logs_tail(40)
    );
    writer.wait_more(3, "after the restart");
    // The impostor ends: nothing the daemon holds goes with it.
    let ended = impostor.finish();
    assert_eq!(
        ended.code(),
        Some(0),
        "the impostor was signalled: {ended:?}"
    );
    // A few health rounds (1 s apart): an adopted impostor's exit made them call the mount
    // stale and mount it again, killing the real s3fs.
    thread::sleep(Duration::from_secs(4));
    writer.wait_more(3, "after the impostor's exit");
    let st = status(&d, &vol);
    assert_eq!(health(&st), "ok", "{st}");
    assert_eq!(root_s3fs(&d), real, "the real s3fs keeps its PID");
    assert!(
        !d.logs().contains("mounting again"),
        "the mount was judged stale\n{}",
        d.logs_tail(40)
    );
    // The next Mount joins the live s3fs within --mount-timeout.
    let t = Instant::now();
    let id2 = new_id();
    assert_eq!(mount_ok(&d, &vol, &id2), mp);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    unmount_ok(&d, &vol, &id2);
    assert_eq!(root_s3fs(&d), real);
    let n = writer.finish();
    unmount_ok(&d, &vol, &id);
    assert_lines_in_bucket(s3, &bucket, "job.log", n);
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_respawning_impostor_of_an_unmounted_shared_mount_is_never_signalled() {
    let Some((s3, d)) = setup_with(
        "a_respawning_impostor_of_an_unmounted_shared_mount_is_never_signalled",
        &["--mount-timeout", "10"],
    ) else {
        return;
    };
    let (busy, target) = (new_bucket(s3, "impw"), new_bucket(s3, "impt"));
    let (vw, vt) = (unique_name("impw"), unique_name("impt"));
    create_ok(&d, &vw, &[("bucket", &busy)]);
    create_ok(&d, &vt, &[("bucket", &target)]);
    let idw = new_id();
    let mpw = mount_ok(&d, &vw, &idw);
    let writer = Writer::start(&mpw.join("job.log"));
    // Learn the target bucket's shared mount, then let it go: it is not mounted any more.
    let id = new_id();
    let shared = shared_mount_of(&d, &mount_ok(&d, &vt, &id));
    unmount_ok(&d, &vt, &id);
    poll(Duration::from_secs(10), || {
        (!is_mountpoint(&shared)).then_some(())
    })
    .expect("the shared mount went with its last volume");
    let real = root_s3fs(&d);
    assert_eq!(real.len(), 1, "only the busy bucket's s3fs runs");

    let impostor = Impostor::start("respawn", &shared);
    Impostor::wait_dressed(impostor.pid(), &shared);
    let child = poll(Duration::from_secs(10), || {
        impostor.children().first().copied()
    })
    .expect("the impostor's child");
    Impostor::wait_dressed(child, &shared);

    let t = Instant::now();
    let mp = mount_ok(&d, &vt, &id);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "the Mount took {took:?}");
    fs::write(mp.join("after.txt"), b"ok").unwrap();
    assert!(
        process_alive(impostor.pid()) && impostor.children() == vec![child],
        "the impostor or its child was signalled (respawned: {:?})",
        impostor.children()
    );
    writer.wait_more(3, "after the Mount next to the impostor");
    unmount_ok(&d, &vt, &id);
    let ended = impostor.finish();
    assert_eq!(
        ended.code(),
        Some(0),
        "the impostor was signalled: {ended:?}"
    );
    assert_eq!(
        s3.s3().get(&target, "after.txt").unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    let n = writer.finish();
    unmount_ok(&d, &vw, &idw);
    assert_lines_in_bucket(s3, &busy, "job.log", n);
    for v in [&vw, &vt] {
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
    let n = writer.finish();
    unmount_ok(&d, &other, &ido);
    assert_lines_in_bucket(s3, &b2, "job.log", n);
    for (v, id) in vols.iter().zip(&ids) {
        unmount_ok(&d, v, id);
    }
    for v in vols.iter().chain([&other, &ninth]) {
        d.remove(v).unwrap();
    }
}

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
