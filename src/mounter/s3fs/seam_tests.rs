//! The s3fs mounter's rules over a pretended system ([`super::super::fakesys`]): no root, no
//! s3fs, no FUSE. Folders are real temporary ones; mounts and processes are the fake's.

use super::*;
use crate::mounter::fakesys::{Call, Fault, FaultySys, Kind, RecordingSys, State};
use crate::mounter::Cause;

type Fake = FaultySys<RecordingSys>;

struct Rig {
    dir: tempfile::TempDir,
    sys: Arc<Fake>,
    m: S3fsMounter<Fake>,
}

impl Rig {
    fn new(mount_timeout: Duration) -> Rig {
        Rig::with_max_mounts(mount_timeout, 0)
    }

    /// A rig whose mounter runs at most `max_mounts` s3fs (`--max-mounts`; 0: no limit).
    fn with_max_mounts(mount_timeout: Duration, max_mounts: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        let sys = Arc::new(FaultySys::new(RecordingSys::new()));
        let cfg = S3fsConfig {
            max_mounts,
            ..Self::cfg(dir.path(), mount_timeout)
        };
        let m = S3fsMounter::with_sys(cfg, sys.clone());
        Rig { dir, sys, m }
    }

    fn cfg(dir: &Path, mount_timeout: Duration) -> S3fsConfig {
        S3fsConfig {
            mount_root: dir.join("mnt"),
            state_dir: dir.join("state"),
            mount_timeout,
            program: "s3fs".into(),
            min_disk_free: 64,
            max_mounts: 0,
            name_key: [7; fsutil::KEY_LEN],
        }
    }

    /// A second mounter on the same system: the daemon after a restart.
    fn restarted(&self) -> S3fsMounter<Fake> {
        S3fsMounter::with_sys(
            Self::cfg(self.dir.path(), self.m.cfg.mount_timeout),
            self.sys.clone(),
        )
    }

    fn fake(&self) -> &RecordingSys {
        &self.sys.inner
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn target(&self, volume: &str) -> PathBuf {
        self.root().join(volume)
    }

    fn shared(&self, name: &str) -> PathBuf {
        self.root().join(crate::layout::SHARED_DIR).join(name)
    }

    fn spec(&self, volume: &str, pairs: &[(&str, &str)]) -> MountSpec {
        MountSpec {
            volume: volume.into(),
            target: self.target(volume),
            ..super::tests::spec(pairs)
        }
    }

    /// Mount `volume` with `pairs`; the shared mount's name and its s3fs's PID.
    async fn mount(&self, volume: &str, pairs: &[(&str, &str)]) -> (String, u32) {
        let name = self.m.mount(&self.spec(volume, pairs)).await.unwrap();
        let pid = self.fake().pid_with_arg(&self.shared(&name)).unwrap();
        (name, pid)
    }
}

/// A failed assertion must not leave a blocking thread hanging: the test's runtime waits for
/// them when it shuts down.
impl Drop for Rig {
    fn drop(&mut self) {
        self.sys.release();
        self.fake().resume_all();
    }
}

/// Wait (bounded) for something the mounter's detached work does.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const B: &[(&str, &str)] = &[("bucket", "bkt")];
const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_mount_starts_one_s3fs_and_binds_the_volume_to_it() {
    let r = Rig::new(T);
    let (name, pid) = r.mount("v", B).await;
    assert!(r.fake().is_mounted(&r.shared(&name)));
    assert!(r.fake().is_mounted(&r.target("v")));
    assert!(r.target("v").is_dir());
    assert_eq!(r.m.health(&r.target("v")), Health::Ok);
    assert_eq!(r.m.probe(&r.target("v")).await, Health::Ok);
    assert_eq!(r.fake().live_pids(), vec![pid]);
    // A prefix volume is a bind of that folder of the same s3fs.
    let (_, pid_p) = r.mount("p", &[("bucket", "bkt"), ("prefix", "p/q")]).await;
    assert_eq!(pid_p, pid);
    let table = r.fake().mounts();
    let bound = sys::mount_at(&table, &r.target("p")).unwrap();
    let shared = sys::mount_at(&table, &r.shared(&name)).unwrap();
    assert_eq!((bound.dev, bound.root), (shared.dev, PathBuf::from("/p/q")));
}

#[tokio::test]
async fn a_restarted_daemon_adopts_a_live_bind_of_a_live_s3fs() {
    let r = Rig::new(T);
    let (name, pid) = r.mount("v", B).await;
    let m2 = r.restarted();
    assert_eq!(m2.health(&r.target("v")), Health::NotMounted);
    assert_eq!(
        m2.adopt(&r.target("v"), Some(&name)).await,
        Adoption::Live {
            shared: name.clone()
        }
    );
    assert_eq!(m2.health(&r.target("v")), Health::Ok);
    // The adopted s3fs is shared by the next Mount of the same bucket: no second process.
    assert_eq!(m2.mount(&r.spec("w", B)).await.unwrap(), name);
    assert_eq!(r.fake().live_pids(), vec![pid]);
    assert_eq!(
        r.fake()
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Spawn(_)))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_bind_of_a_dead_s3fs_is_adopted_as_dead_and_nothing_as_absent() {
    let r = Rig::new(T);
    let (name, pid) = r.mount("v", B).await;
    r.fake().set_state(pid, State::Dead);
    let m2 = r.restarted();
    assert_eq!(m2.adopt(&r.target("v"), Some(&name)).await, Adoption::Dead);
    assert_eq!(m2.health(&r.target("v")), Health::NotMounted);
    assert_eq!(m2.adopt(&r.target("none"), None).await, Adoption::Absent);
}

#[tokio::test]
async fn an_s3fs_whose_command_line_does_not_match_is_not_adopted_nor_signalled() {
    let r = Rig::new(T);
    let shared = r.shared("default-b-0123");
    let other = r
        .fake()
        .add_process("s3fs", &["b", "/elsewhere", "-f", "-o", "x"]);
    r.fake().add_mount(&shared, S3FS_TYPE, Some(other));
    r.fake().add_bind(&shared, "/", &r.target("v")).unwrap();
    assert_eq!(r.m.adopt(&r.target("v"), None).await, Adoption::Dead);
    // A bind of something that is not ours in our folders: not ours either.
    r.fake().add_mount(&r.target("x"), "ext4", None);
    assert_eq!(r.m.adopt(&r.target("x"), None).await, Adoption::Dead);
    assert!(!r.fake().signalled(other));
}

#[tokio::test]
async fn sweep_removes_leftovers_but_never_a_kept_target_its_s3fs_or_foreign_mounts() {
    let r = Rig::new(T);
    let f = r.fake();
    // Left by an earlier run: a bind of an s3fs nobody holds...
    let old = r.shared("default-old-1");
    let p_old = f.add_process("s3fs", &["old", old.to_str().unwrap()]);
    f.add_mount(&old, S3FS_TYPE, Some(p_old));
    f.add_bind(&old, "/", &r.target("gone")).unwrap();
    // ...a held volume's bind and its s3fs...
    let kept = r.shared("default-kept-2");
    let p_kept = f.add_process("s3fs", &["kept", kept.to_str().unwrap()]);
    f.add_mount(&kept, S3FS_TYPE, Some(p_kept));
    f.add_bind(&kept, "/", &r.target("held")).unwrap();
    // ...an s3fs that never got its mount...
    let stray_path = r.shared("default-stray-3");
    let p_stray = f.add_process("s3fs", &["stray", stray_path.to_str().unwrap()]);
    // ...and somebody else's mount in the mount root.
    f.add_mount(&r.target("foreign"), "ext4", None);

    r.m.sweep(&[r.target("held")]).await;

    assert!(!f.is_mounted(&r.target("gone")) && !f.is_mounted(&old));
    assert_eq!(f.state(p_old), Some(State::Dead));
    assert!(f.is_mounted(&r.target("held")) && f.is_mounted(&kept));
    assert!(
        !f.called(|c| *c == Call::Unmount(r.target("held")) || *c == Call::Unmount(kept.clone()))
    );
    assert!(!f.signalled(p_kept));
    assert_eq!(f.state(p_kept), Some(State::Running));
    assert!(f.signalled(p_stray));
    assert_eq!(f.state(p_stray), Some(State::Dead));
    assert!(f.is_mounted(&r.target("foreign")));
    assert!(!f.called(|c| *c == Call::Unmount(r.target("foreign"))));
}

#[tokio::test]
async fn the_last_unmount_stops_a_shared_s3fs_and_never_signals_one_still_in_use() {
    let r = Rig::new(T);
    let (name, pid) = r.mount("a", B).await;
    let (name_b, pid_b) = r.mount("b", B).await;
    assert_eq!((name_b, pid_b), (name.clone(), pid));

    r.m.unmount(&r.target("a")).await.unwrap();
    assert!(!r.fake().is_mounted(&r.target("a")) && !r.target("a").exists());
    assert_eq!(r.fake().state(pid), Some(State::Running));
    assert!(r.fake().is_mounted(&r.shared(&name)));
    assert_eq!(r.m.health(&r.target("b")), Health::Ok);

    r.m.unmount(&r.target("b")).await.unwrap();
    assert_eq!(r.fake().state(pid), Some(State::Dead));
    assert!(!r.fake().is_mounted(&r.shared(&name)) && !r.shared(&name).exists());
    // It exited because its mount went away: a clean stop, no signal needed.
    assert!(!r.fake().signalled(pid));
    assert!(r.m.shared.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_s3fs_that_never_gets_ready_fails_the_mount_at_its_timeout_and_leaves_nothing() {
    let r = Rig::new(Duration::from_millis(300));
    r.fake().set_mount_on_spawn(false);
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(
        e.to_string().contains("did not make the mount ready")
            && e.to_string().contains("--mount-timeout"),
        "{e}"
    );
    assert!(matches!(e, MountError::NeverReady { .. }), "{e:?}");
    assert!(r.fake().live_pids().is_empty());
    assert!(!r.fake().is_mounted(&r.target("v")));
    let name = r.m.shared_name(&r.spec("v", B));
    assert!(!r.shared(&name).exists() && !r.target("v").exists());
}

#[tokio::test]
async fn a_bind_that_hangs_fails_the_mount_at_its_timeout_and_is_undone_when_it_lands() {
    let r = Rig::new(Duration::from_millis(300));
    let (name, pid) = r.mount("a", B).await;
    r.sys.arm(Kind::Bind, 1, Fault::Hang);
    let e = r.m.mount(&r.spec("b", B)).await.unwrap_err();
    assert!(
        e.to_string().contains("did not answer") && e.to_string().contains("--mount-timeout"),
        "{e}"
    );
    assert!(matches!(e, MountError::Deadline { .. }), "{e:?}");
    assert_eq!(r.m.health(&r.target("b")), Health::NotMounted);
    // The bind lands after the Mount answered: it must be undone at once.
    r.sys.release();
    let target = r.target("b");
    eventually("the late bind is undone", || {
        let calls = r.fake().calls();
        let bound = calls
            .iter()
            .position(|c| matches!(c, Call::Bind(_, t, _) if *t == target));
        bound.is_some_and(|i| calls[i..].contains(&Call::Unmount(target.clone())))
            && !target.exists()
    })
    .await;
    assert!(!r.fake().is_mounted(&target));
    // The other volume's s3fs was never touched.
    assert_eq!(r.fake().state(pid), Some(State::Running));
    assert!(!r.fake().signalled(pid));
    assert!(r.fake().is_mounted(&r.shared(&name)) && r.fake().is_mounted(&r.target("a")));
}

#[tokio::test]
async fn a_hang_in_the_first_bind_leaves_no_process_mount_or_folder() {
    let r = Rig::new(Duration::from_millis(300));
    r.sys.arm(Kind::Bind, 1, Fault::Hang);
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(e.to_string().contains("--mount-timeout"), "{e}");
    assert_eq!(e.cause(), Cause::Timeout, "{e:?}");
    assert!(r.fake().live_pids().is_empty());
    r.sys.release();
    let target = r.target("v");
    eventually("the abandoned bind gives up", || {
        r.fake()
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Bind(_, t, _) if *t == target))
            && !target.exists()
    })
    .await;
    let name = r.m.shared_name(&r.spec("v", B));
    assert!(!r.fake().is_mounted(&target) && !r.fake().is_mounted(&r.shared(&name)));
    assert!(!r.shared(&name).exists());
}

#[tokio::test]
async fn a_stopped_s3fs_is_slow_never_killed_and_a_join_fails_at_the_timeout() {
    let r = Rig::new(Duration::from_millis(300));
    let (_, pid) = r.mount("a", B).await;
    r.fake().set_state(pid, State::Stopped);
    let e = r.m.mount(&r.spec("b", B)).await.unwrap_err();
    assert!(
        e.to_string().contains("did not answer") && e.to_string().contains("left running"),
        "{e}"
    );
    assert!(matches!(e, MountError::SharedUnanswered { .. }), "{e:?}");
    assert_eq!(r.m.health(&r.target("a")), Health::Slow);
    assert_eq!(r.m.probe(&r.target("a")).await, Health::Slow);
    assert!(!r.fake().signalled(pid));
    assert!(r.fake().is_mounted(&r.target("a")));
    // Answering again makes it ok again.
    r.fake().set_state(pid, State::Running);
    assert_eq!(r.m.probe(&r.target("a")).await, Health::Ok);
    assert_eq!(r.m.health(&r.target("a")), Health::Ok);
}

#[tokio::test]
async fn an_exited_s3fs_or_a_vanished_bind_is_stale() {
    let r = Rig::new(T);
    r.mount("a", B).await;
    let (_, pid) = r.mount("c", &[("bucket", "ckt")]).await;
    // Someone unmounted the volume's bind behind our back.
    r.fake().unmount(&r.target("a")).unwrap();
    assert_eq!(r.m.probe(&r.target("a")).await, Health::Stale);
    r.fake().set_state(pid, State::Dead);
    assert_eq!(r.m.health(&r.target("c")), Health::Stale);
    assert_eq!(r.m.probe(&r.target("c")).await, Health::Stale);
    // The next Mount of that bucket replaces the dead s3fs.
    let (_, pid2) = r.mount("d", &[("bucket", "ckt")]).await;
    assert_ne!(pid2, pid);
    assert_eq!(r.m.health(&r.target("d")), Health::Ok);
}

#[tokio::test]
async fn a_gone_fuse_connection_is_stale_though_its_s3fs_lives_and_is_replaced_on_mount() {
    let r = Rig::new(T);
    let (name, pid) = r.mount("a", B).await;
    r.fake().abort_connection(&r.shared(&name));
    assert_eq!(r.m.probe(&r.target("a")).await, Health::Stale);
    // Probing kills nothing; the next Mount of the bucket finds the mount dead and replaces
    // its s3fs, which serves nobody any more.
    assert!(!r.fake().signalled(pid));
    let (name2, pid2) = r.mount("b", B).await;
    assert_eq!(name2, name);
    assert_ne!(pid2, pid);
    assert_eq!(r.fake().state(pid), Some(State::Dead));
    assert_eq!(r.m.probe(&r.target("b")).await, Health::Ok);
}

#[tokio::test]
async fn an_s3fs_dying_during_its_start_fails_the_mount_with_its_words() {
    let r = Rig::new(T);
    r.sys.arm(Kind::FuseReady, 1, Fault::Die);
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("s3fs exited before the mount was ready"),
        "{e}"
    );
    assert!(matches!(e, MountError::Exited { .. }), "{e:?}");
    assert!(r.fake().live_pids().is_empty());
    assert!(!r.target("v").exists());
    r.sys.arm(Kind::Spawn, 1, Fault::Fail);
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(e.to_string().contains("cannot start s3fs"), "{e}");
    assert!(matches!(e, MountError::Spawn { .. }), "{e:?}");
    // Faults are one-off: the next Mount works.
    r.mount("v", B).await;
}

/// The `-o` options of the s3fs spawned for the shared mount `name`.
fn spawned_options(r: &Rig, name: &str) -> Vec<String> {
    let path = r.shared(name).into_os_string();
    let calls = r.fake().calls();
    let args = calls
        .iter()
        .find_map(|c| match c {
            Call::Spawn(a) if a.get(1) == Some(&path) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no s3fs was spawned for {name}"));
    let at = args.iter().position(|a| a == "-o").unwrap();
    let opts = args[at + 1].to_string_lossy().into_owned();
    opts.split(',').map(str::to_string).collect()
}

#[tokio::test]
async fn a_read_only_volume_gets_an_s3fs_of_its_own_mounted_read_only() {
    let r = Rig::new(T);
    let ro = &[("bucket", "bkt"), ("ro", "true")];
    let (rw_name, rw_pid) = r.mount("a", B).await;
    let (ro_name, ro_pid) = r.mount("b", ro).await;
    // Same bucket, two identities: two processes, the read-only one named so.
    assert_ne!(ro_name, rw_name);
    assert_ne!(ro_pid, rw_pid);
    assert!(
        ro_name.contains("-ro-") && !rw_name.contains("-ro-"),
        "{ro_name} {rw_name}"
    );
    let (rw_o, ro_o) = (spawned_options(&r, &rw_name), spawned_options(&r, &ro_name));
    assert!(ro_o.contains(&"ro".to_string()), "{ro_o:?}");
    assert!(!rw_o.contains(&"ro".to_string()), "{rw_o:?}");
    for o in [&rw_o, &ro_o] {
        assert!(o.contains(&"nosuid".to_string()) && o.contains(&"nodev".to_string()));
    }
    // The bind of a read-only volume is read-only too; a writable one's is not.
    let bound_ro = |t: PathBuf| move |c: &Call| matches!(c, Call::Bind(_, to, true) if *to == t);
    assert!(r.fake().called(bound_ro(r.target("b"))));
    assert!(!r.fake().called(bound_ro(r.target("a"))));
    // Another read-only volume of the bucket, another prefix (one a writer made): the same
    // read-only s3fs.
    fs::create_dir(r.shared(&ro_name).join("p")).unwrap();
    let (c_name, c_pid) = r
        .mount("c", &[("bucket", "bkt"), ("ro", "true"), ("prefix", "p")])
        .await;
    assert_eq!((c_name, c_pid), (ro_name.clone(), ro_pid));
    // Each stops with its own last volume; the other is never touched.
    r.m.unmount(&r.target("b")).await.unwrap();
    r.m.unmount(&r.target("c")).await.unwrap();
    assert_eq!(r.fake().state(ro_pid), Some(State::Dead));
    assert_eq!(r.fake().state(rw_pid), Some(State::Running));
    assert!(!r.fake().signalled(rw_pid));
    assert_eq!(r.m.health(&r.target("a")), Health::Ok);
}

#[tokio::test]
async fn a_read_only_bind_of_a_writable_s3fs_left_by_an_older_version_is_adopted_and_kept() {
    let r = Rig::new(T);
    let (rw_name, rw_pid) = r.mount("w", B).await;
    // What versions before read-only s3fs mounts made of a ro volume: a bind of the bucket's
    // writable s3fs, recorded with that s3fs's name.
    r.fake()
        .add_bind(&r.shared(&rw_name), "/", &r.target("old"))
        .unwrap();
    let m2 = r.restarted();
    for v in ["w", "old"] {
        assert_eq!(
            m2.adopt(&r.target(v), Some(&rw_name)).await,
            Adoption::Live {
                shared: rw_name.clone()
            },
            "{v}"
        );
    }
    // A new Mount of a ro volume gets the new scheme; the adopted one keeps its bind.
    let ro = m2
        .mount(&r.spec("new", &[("bucket", "bkt"), ("ro", "true")]))
        .await
        .unwrap();
    assert_ne!(ro, rw_name);
    assert!(spawned_options(&r, &ro).contains(&"ro".to_string()));
    assert!(r.fake().is_mounted(&r.target("old")));
    assert_eq!(m2.health(&r.target("old")), Health::Ok);
    m2.unmount(&r.target("new")).await.unwrap();
    // Its last holder gone, the old bind goes, and the writable s3fs stays for `w`.
    m2.unmount(&r.target("old")).await.unwrap();
    assert!(!r.fake().is_mounted(&r.target("old")));
    assert_eq!(r.fake().state(rw_pid), Some(State::Running));
    assert!(!r.fake().signalled(rw_pid));
    assert_eq!(m2.health(&r.target("w")), Health::Ok);
}

/// Processes that name a shared mount in their arguments (`argv[0]` is theirs to make `s3fs`)
/// but that the kernel says are not bai-s3's s3fs: one of another uid running the s3fs
/// program, one of root running another program.
fn impostors(r: &Rig, path: &Path) -> [u32; 2] {
    let args = ["bkt", path.to_str().unwrap(), "-f"];
    [
        r.fake().add_process_as(65534, "s3fs", &args),
        r.fake().add_process_as(0, "perl", &args),
    ]
}

#[tokio::test]
async fn a_process_with_the_right_argv_but_another_uid_or_exe_is_neither_adopted_nor_signalled() {
    let r = Rig::new(T);
    // A live mount whose s3fs has gone, and impostors (lower PIDs) that name its path.
    let (name, pid) = r.mount("v", B).await;
    let shared = r.shared(&name);
    let fakes = impostors(&r, &shared);
    r.fake().set_state(pid, State::Dead);
    let m2 = r.restarted();
    assert_eq!(m2.adopt(&r.target("v"), Some(&name)).await, Adoption::Dead);
    // The next Mount starts a new s3fs next to them: they are in nobody's way.
    let name2 = m2.mount(&r.spec("w", B)).await.unwrap();
    assert_eq!(name2, name);
    // And the sweep, which stops s3fs that serve nobody, leaves them be too: for processes
    // named like a shared mount that is not mounted...
    let stray = r.shared("default-stray-9");
    let stray_fakes = impostors(&r, &stray);
    m2.sweep(&[r.target("w")]).await;
    // ...and for a shared mount nobody holds any more.
    let m3 = r.restarted();
    m3.sweep(&[]).await;
    for p in fakes.into_iter().chain(stray_fakes) {
        assert!(!r.fake().signalled(p), "impostor {p} was signalled");
        assert_eq!(r.fake().state(p), Some(State::Running));
    }
    // The one of root running the s3fs program is ours and was adopted, or stopped by sweep.
    let real = r
        .fake()
        .add_process("s3fs", &["bkt", stray.to_str().unwrap(), "-f"]);
    r.restarted().sweep(&[r.target("w")]).await;
    assert!(r.fake().signalled(real));
}

#[tokio::test]
async fn an_unmounted_shared_mount_named_by_an_impostor_mounts_without_signalling_it() {
    let r = Rig::new(T);
    let name = r.m.shared_name(&r.spec("v", B));
    let fakes = impostors(&r, &r.shared(&name));
    r.m.mount(&r.spec("v", B)).await.unwrap();
    assert_eq!(r.m.probe(&r.target("v")).await, Health::Ok);
    assert_eq!(
        r.fake().live_pids().len(),
        3,
        "the impostors and the new s3fs"
    );
    for p in fakes {
        assert!(!r.fake().signalled(p));
        assert_eq!(r.fake().state(p), Some(State::Running));
    }
}

#[tokio::test]
async fn an_s3fs_of_ours_that_will_not_die_fails_the_mount_at_its_deadline_saying_so() {
    let r = Rig::new(Duration::from_millis(300));
    let name = r.m.shared_name(&r.spec("v", B));
    let shared = r.shared(&name);
    // Ours by the kernel's word, and stuck where SIGKILL does not reach it.
    let stuck = r
        .fake()
        .add_process("s3fs", &["bkt", shared.to_str().unwrap()]);
    r.fake().set_unkillable(stuck);
    let started = Instant::now();
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(
        matches!(e, MountError::InTheWay { pid, .. } if pid == stuck),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!("pid {stuck}"))
            && e.to_string().contains("--mount-timeout"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(r.fake().signalled(stuck));
    // Nothing was started next to it.
    assert!(!r.fake().called(|c| matches!(c, Call::Spawn(_))));
}

#[tokio::test]
async fn a_stopped_s3fs_has_one_probe_in_flight_however_many_rounds_and_volumes() {
    let r = Rig::new(Duration::from_millis(300));
    let mut pid = 0;
    for i in 0..8 {
        pid = r.mount(&format!("v{i}"), B).await.1;
    }
    let statvfs = || {
        r.fake()
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Statvfs(_)))
            .count()
    };
    let before = statvfs();
    r.fake().set_state(pid, State::Stopped);
    // 30 health rounds of 8 probes each, side by side as the driver runs them, and Mounts of
    // the same bucket meanwhile.
    for _ in 0..30 {
        let targets: Vec<PathBuf> = (0..8).map(|i| r.target(&format!("v{i}"))).collect();
        for h in join_all(targets.iter().map(|t| r.m.probe(t))).await {
            assert_eq!(h, Health::Slow);
        }
        let e = r.m.mount(&r.spec("late", B)).await.unwrap_err();
        assert!(matches!(e, MountError::SharedUnanswered { .. }), "{e:?}");
    }
    assert_eq!(statvfs() - before, 1, "one call into the stopped s3fs");
    assert!(!r.fake().signalled(pid));
    // Once it runs again, the stuck call returns and the next probe asks anew.
    r.fake().set_state(pid, State::Running);
    let mut ok = false;
    for _ in 0..100 {
        if r.m.probe(&r.target("v0")).await == Health::Ok {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok);
    assert_eq!(r.m.health(&r.target("v3")), Health::Ok);
}

/// Await every future side by side (as `JoinSet` in the driver's health round does).
async fn join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let fs: Vec<_> = fs.map(Box::pin).collect();
    let mut pending: Vec<Option<_>> = fs.into_iter().map(Some).collect();
    let n = pending.len();
    out.resize_with(n, || None);
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn where_pidfds_are_refused_a_leftover_s3fs_is_never_signalled_and_the_mount_says_so() {
    let r = Rig::new(Duration::from_millis(300));
    r.fake().refuse_pidfds();
    let name = r.m.shared_name(&r.spec("v", B));
    let left = r
        .fake()
        .add_process("s3fs", &["bkt", r.shared(&name).to_str().unwrap()]);
    let e = r.m.mount(&r.spec("v", B)).await.unwrap_err();
    assert!(
        matches!(e, MountError::InTheWay { pid, .. } if pid == left),
        "{e:?}"
    );
    assert!(!r.fake().signalled(left));
    r.m.sweep(&[]).await;
    assert!(!r.fake().signalled(left));
    assert_eq!(r.fake().state(left), Some(State::Running));
}

#[tokio::test]
async fn max_mounts_refuses_one_more_s3fs_but_never_a_join_and_frees_its_place() {
    let r = Rig::with_max_mounts(Duration::from_millis(300), 2);
    let spawns = || {
        r.fake()
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Spawn(_)))
            .count()
    };
    let (a, _) = r.mount("a", &[("bucket", "ba-bucket")]).await;
    r.mount("b", &[("bucket", "bb-bucket")]).await;
    let third = r.spec("c", &[("bucket", "bc-bucket")]);
    let err = r.m.mount(&third).await.unwrap_err();
    assert!(
        matches!(
            err,
            MountError::Limit {
                mounted: 2,
                max: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.cause(), Cause::Limit);
    let said = err.to_string();
    for word in [
        "\"bc-bucket\"",
        "2 of at most 2",
        "--max-mounts",
        "BAI_S3_MAX_MOUNTS",
    ] {
        assert!(said.contains(word), "{word} not in: {said}");
    }
    // Nothing was started or made for it.
    assert_eq!(spawns(), 2);
    assert!(!r.target("c").exists());
    assert!(!r.shared(&r.m.shared_name(&third)).exists());
    assert_eq!(r.m.health(&r.target("c")), Health::NotMounted);
    // Another volume of a mounted bucket joins its s3fs: no place taken.
    let (joined, _) = r
        .mount("a2", &[("bucket", "ba-bucket"), ("prefix", "p")])
        .await;
    assert_eq!(joined, a);
    assert_eq!(spawns(), 2);
    // An s3fs that never gets ready gives its place back.
    r.m.unmount(&r.target("b")).await.unwrap();
    r.fake().set_mount_on_spawn(false);
    let err =
        r.m.mount(&r.spec("d", &[("bucket", "bd-bucket")]))
            .await
            .unwrap_err();
    assert_eq!(err.cause(), Cause::Timeout, "{err:?}");
    r.fake().set_mount_on_spawn(true);
    r.mount("c", &[("bucket", "bc-bucket")]).await;
    assert!(r
        .m
        .mount(&r.spec("e", &[("bucket", "be-bucket")]))
        .await
        .is_err());
    // The bucket's last volume leaves: its place is free for the next bucket.
    r.m.unmount(&r.target("a")).await.unwrap();
    assert!(r
        .m
        .mount(&r.spec("e", &[("bucket", "be-bucket")]))
        .await
        .is_err());
    r.m.unmount(&r.target("a2")).await.unwrap();
    r.mount("e", &[("bucket", "be-bucket")]).await;
    assert_eq!(spawns(), 5);
}

#[tokio::test]
async fn a_round_of_probes_reads_the_mount_table_once() {
    let r = Rig::new(T);
    for (v, b) in [("a", "aa-bucket"), ("b", "bb-bucket"), ("c", "cc-bucket")] {
        r.mount(v, &[("bucket", b)]).await;
    }
    let reads = || {
        r.fake()
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Mounts))
            .count()
    };
    let before = reads();
    for v in ["a", "b", "c", "a", "b", "c"] {
        assert_eq!(r.m.probe(&r.target(v)).await, Health::Ok);
    }
    assert!(reads() - before <= 1, "{} readings", reads() - before);
    // A target missing from the shared reading is looked up afresh: one mounted since is ok.
    r.mount("d", &[("bucket", "dd-bucket")]).await;
    assert_eq!(r.m.probe(&r.target("d")).await, Health::Ok);
    // One unmounted behind the daemon's back is stale at the latest once the reading is older
    // than its age (the next health round).
    r.sys.inner.unmount(&r.target("c")).unwrap();
    tokio::time::sleep(PROBE_TABLE_AGE).await;
    assert_eq!(r.m.probe(&r.target("c")).await, Health::Stale);
    assert_eq!(r.m.probe(&r.target("a")).await, Health::Ok);
}

#[tokio::test]
async fn usage_counts_the_live_s3fs_held_and_their_memory_not_impostors() {
    let r = Rig::new(T);
    assert_eq!(r.m.usage(), crate::mounter::Usage::default());
    let (name_a, pid_a) = r.mount("a", B).await;
    let (_, pid_a2) = r.mount("a2", &[("bucket", "bkt"), ("prefix", "p")]).await;
    assert_eq!(pid_a2, pid_a, "one s3fs for both volumes of the bucket");
    let (_, pid_b) = r.mount("b", &[("bucket", "other")]).await;
    r.fake().set_resident(pid_a, 3 << 20);
    r.fake().set_resident(pid_b, 5 << 20);
    // A process that names a shared mount but is not held (an impostor) is not counted.
    let impostor = r
        .fake()
        .add_process("s3fs", &["bkt", r.shared(&name_a).to_str().unwrap()]);
    r.fake().set_resident(impostor, 100 << 20);
    let u = r.m.usage();
    assert_eq!(u.s3fs_processes, 2, "{u:?}");
    assert_eq!(u.s3fs_resident_bytes, 8 << 20, "{u:?}");
    // A dead s3fs is not counted, though its volume still holds it.
    r.fake().set_state(pid_b, State::Dead);
    assert_eq!(
        r.m.usage(),
        crate::mounter::Usage {
            s3fs_processes: 1,
            s3fs_resident_bytes: 3 << 20
        }
    );
    // The last volume of a bucket gone, so is its s3fs.
    r.m.unmount(&r.target("a")).await.unwrap();
    assert_eq!(r.m.usage().s3fs_processes, 1);
    r.m.unmount(&r.target("a2")).await.unwrap();
    r.m.unmount(&r.target("b")).await.unwrap();
    assert_eq!(r.m.usage(), crate::mounter::Usage::default());
}

#[tokio::test]
async fn the_configured_program_not_the_name_s3fs_is_what_start_adopt_and_sweep_take_as_ours() {
    // `--s3fs s3fs-alt`: a process running the file `s3fs` is not ours, whatever it names.
    let alt = |r: &Rig| {
        S3fsMounter::with_sys(
            S3fsConfig {
                program: "s3fs-alt".into(),
                ..Rig::cfg(r.dir.path(), T)
            },
            r.sys.clone(),
        )
    };
    let mut r = Rig::new(T);
    r.m = alt(&r);
    let f = r.fake();
    // Start: an s3fs of the configured program in the way is ours and stopped; one of the
    // file `s3fs` is left alone.
    let spec = r.spec("v", B);
    let path = r.shared(&r.m.shared_name(&spec));
    let in_the_way = f.add_process("s3fs-alt", &["bkt", path.to_str().unwrap()]);
    let literal = f.add_process("s3fs", &["bkt", path.to_str().unwrap()]);
    let name = r.m.mount(&spec).await.unwrap();
    assert_eq!(f.state(in_the_way), Some(State::Dead));
    assert!(!f.signalled(literal));
    let pid = f
        .live_pids()
        .into_iter()
        .find(|p| ![literal, in_the_way].contains(p))
        .unwrap();
    // Adopt: a restart with the same program adopts it; one that takes `s3fs` for its own
    // does not (once the process of the file `s3fs` naming the mount, its own, is gone).
    assert_eq!(
        alt(&r).adopt(&r.target("v"), Some(&name)).await,
        Adoption::Live {
            shared: name.clone()
        }
    );
    f.set_state(literal, State::Dead);
    assert_eq!(
        r.restarted().adopt(&r.target("v"), None).await,
        Adoption::Dead
    );
    // Sweep: only the configured program's strays and shared mounts are stopped.
    let stray = r.shared("default-stray-9");
    let p_alt = f.add_process("s3fs-alt", &["stray", stray.to_str().unwrap()]);
    let p_lit = f.add_process("s3fs", &["stray", stray.to_str().unwrap()]);
    let old = r.shared("default-old-9");
    let p_old = f.add_process("s3fs-alt", &["old", old.to_str().unwrap()]);
    f.add_mount(&old, S3FS_TYPE, Some(p_old));
    alt(&r).sweep(&[r.target("v")]).await;
    assert_eq!(f.state(p_alt), Some(State::Dead));
    assert!(f.signalled(p_alt));
    assert!(!f.signalled(p_lit) && f.state(p_lit) == Some(State::Running));
    assert!(!f.is_mounted(&old));
    assert_eq!(f.state(p_old), Some(State::Dead));
    assert_eq!(f.state(pid), Some(State::Running));
    assert!(f.is_mounted(&r.target("v")));
}
