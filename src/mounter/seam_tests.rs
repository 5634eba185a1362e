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
        self.root().join(SHARED_DIR).join(name)
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
    let (name_b, pid_b) = r.mount("b", &[("bucket", "bkt"), ("ro", "true")]).await;
    assert_eq!((name_b, pid_b), (name.clone(), pid));
    assert!(r
        .fake()
        .called(|c| matches!(c, Call::Bind(_, t, true) if *t == r.target("b"))));

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
