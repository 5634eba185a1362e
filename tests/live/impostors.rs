//! Processes of another uid dressed up as the s3fs of a shared mount: never adopted, never
//! signalled.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::{root_s3fs, wait_adopted, Writer};

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
    writer.finish_into(&d, (&vol, &id), s3, (&bucket, "job.log"));
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
    writer.finish_into(&d, (&vw, &idw), s3, (&busy, "job.log"));
    for v in [&vw, &vt] {
        d.remove(v).unwrap();
    }
}
