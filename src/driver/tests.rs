//! Counting, sharing and recovery rules of the driver, against the fake mounter.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backends::{Backend, Backends};
use crate::mounter::fake::FakeMounter;
use crate::mounter::Health;
use crate::s3check::{BoxFuture, BucketChecker, BucketError};

struct OkChecker;
impl BucketChecker for OkChecker {
    fn check<'a>(
        &'a self,
        _: &'a str,
        _: &'a Backend,
        bucket: &'a str,
        _: bool,
    ) -> BoxFuture<'a, std::result::Result<(), BucketError>> {
        Box::pin(async move {
            if bucket == "missing" {
                Err(BucketError::Missing {
                    backend: "default".into(),
                    endpoint: "http://127.0.0.1:1".into(),
                    bucket: bucket.into(),
                })
            } else {
                Ok(())
            }
        })
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("backends.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        f.write_all(b"[backends.default]\nendpoint = \"http://127.0.0.1:1\"\naccess-key = \"a\"\nsecret-key = \"s\"\n").unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        Env { dir }
    }

    fn driver(&self, mounter: FakeMounter, delay: Duration) -> Arc<Driver<FakeMounter>> {
        let (store, _) = Store::open(&self.dir.path().join("state")).unwrap();
        let d = Driver::new(
            mounter,
            Box::new(OkChecker),
            Backends::open(&self.dir.path().join("backends.toml")),
            store,
            Settings {
                mount_root: self.dir.path().join("mnt"),
                unmount_delay: delay,
            },
        );
        let _ = d.restored_tx.send(true);
        d
    }
}

fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The volume's `Status` as Docker is shown it.
fn status(d: &Driver<FakeMounter>, name: &str) -> serde_json::Map<String, serde_json::Value> {
    crate::protocol::status_json(&d.get(name).unwrap().status)
}

fn holders(d: &Driver<FakeMounter>, name: &str) -> u64 {
    status(d, name)["holders"].as_u64().unwrap()
}

#[tokio::test]
async fn counting_is_per_id_and_the_last_holder_unmounts() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d.mount("vol", "a").await.unwrap();
    d.mount("vol", "a").await.unwrap(); // docker cp: same ID again
    d.mount("vol", "b").await.unwrap();
    assert_eq!(
        d.mounter.mounts.load(Ordering::SeqCst),
        1,
        "one mount for all holders"
    );
    assert_eq!(holders(&d, "vol"), 3);
    d.unmount("vol", "a").await.unwrap();
    d.unmount("vol", "b").await.unwrap();
    assert_eq!(
        d.mounter.unmounts.load(Ordering::SeqCst),
        0,
        "a still holds one mount"
    );
    assert!(matches!(
        d.remove("vol").await,
        Err(Error::InUse { holders: 1, .. })
    ));
    d.unmount("vol", "a").await.unwrap();
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 1);
    assert_eq!(status(&d, "vol")["mounted"], false);
    d.unmount("vol", "a").await.unwrap(); // unknown ID now: success, no change
    d.unmount("nope", "a").await.unwrap();
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 1);
    d.remove("vol").await.unwrap();
    assert!(d.get("vol").is_err());
}

/// A driver whose first mount fails after 50 ms, with volume "vol" created.
async fn failing_once(env: &Env) -> Arc<Driver<FakeMounter>> {
    let m = FakeMounter::default();
    *m.delay.lock().unwrap() = Duration::from_millis(50);
    m.fail_next.store(true, Ordering::SeqCst);
    let d = env.driver(m, Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d
}

/// `n` Mounts of "vol" by different IDs at once; their answers.
async fn mount_at_once(d: &Arc<Driver<FakeMounter>>, n: usize) -> Vec<Result<PathBuf>> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.mount("vol", &format!("id{i}")).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn concurrent_first_mounts_share_one_attempt_and_its_failure() {
    let env = Env::new();
    let d = failing_once(&env).await;
    let errs = mount_at_once(&d, 8)
        .await
        .iter()
        .filter(|r| r.is_err())
        .count();
    assert_eq!(errs, 8, "all waiters share the failed attempt");
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 1);
    assert_eq!(holders(&d, "vol"), 0);
    // The next caller tries again, and succeeds.
    d.mount("vol", "later").await.unwrap();
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn every_caller_of_a_failed_attempt_is_told_its_cause_as_get_shows_it() {
    let env = Env::new();
    let d = failing_once(&env).await;
    let answers = mount_at_once(&d, 4).await;
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 1);
    let last_error = status(&d, "vol")["last-error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last_error.contains("fake failure"), "{last_error}");
    for answer in answers {
        let e = answer.unwrap_err();
        assert_eq!(e.to_string(), last_error);
        assert_eq!(
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .as_deref(),
            Some("s3fs exited before the mount was ready: fake failure")
        );
    }
}

#[tokio::test]
async fn create_is_idempotent_and_refuses_different_options() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[("ro", "true")])).await.unwrap();
    d.create("vol", &opts(&[("ro", "1")])).await.unwrap();
    let e = d
        .create("vol", &opts(&[("ro", "false")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("different options") && e.contains("ro: true -> false"),
        "{e}"
    );
    let e = d
        .create("other", &opts(&[("backend", "nope")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("configured: default"),
        "{e}"
    );
    let e = d
        .create("other", &opts(&[("bucket", "missing")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(d.list().len(), 1, "refusals register nothing");
}

#[tokio::test]
async fn state_survives_a_restart_and_live_mounts_are_adopted() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d.create("idle", &opts(&[])).await.unwrap();
    let target = d.mount("vol", "a").await.unwrap();
    d.mount("vol", "a").await.unwrap();
    d.mount("vol", "b").await.unwrap();
    drop(d);

    let m = FakeMounter::default();
    m.alive_after_restart.lock().unwrap().push(target.clone());
    let d2 = restarted(&env, m);
    d2.restore().await;
    assert_eq!(d2.list().len(), 2);
    assert_eq!(holders(&d2, "vol"), 3);
    assert_eq!(
        d2.mounter.mounts.load(Ordering::SeqCst),
        0,
        "adopted, not mounted again"
    );
    for id in ["a", "b", "a"] {
        d2.unmount("vol", id).await.unwrap();
    }
    assert_eq!(d2.mounter.unmounts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_mount_is_remounted_on_the_next_mount() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    let t = d.mount("vol", "a").await.unwrap();
    d.mounter.kill(&t);
    assert_eq!(status(&d, "vol")["health"], "stale");
    d.mount("vol", "b").await.unwrap();
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 2);
    assert_eq!(status(&d, "vol")["health"], "ok");
    assert_eq!(holders(&d, "vol"), 2);
}

/// The server answers List from a cached reply while the generation stays: every change List
/// shows must bump it, and holder changes (hot Mounts) must not.
#[tokio::test]
async fn the_list_generation_moves_exactly_when_list_changes() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    let mut seen = (d.list_generation(), format!("{:?}", d.list_entries()));
    let mut step = |what: &str, changes: bool| {
        let now = (d.list_generation(), format!("{:?}", d.list_entries()));
        assert_eq!(
            now.1 != seen.1,
            changes,
            "{what}: List {} -> {}",
            seen.1,
            now.1
        );
        assert_eq!(
            now.0 != seen.0,
            changes,
            "{what}: generation {} -> {}",
            seen.0,
            now.0
        );
        seen = now;
    };
    d.create("vol", &opts(&[])).await.unwrap();
    step("create", true);
    d.create("vol", &opts(&[])).await.unwrap();
    step("create again", false);
    d.mount("vol", "a").await.unwrap();
    step("first mount", true);
    d.mount("vol", "b").await.unwrap();
    step("second holder", false);
    d.unmount("vol", "b").await.unwrap();
    step("a holder leaves", false);
    d.unmount("vol", "a").await.unwrap();
    step("last holder leaves", true);
    d.remove("vol").await.unwrap();
    step("remove", true);
}

#[tokio::test]
async fn unmount_delay_keeps_the_mount_for_a_quick_return() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::from_millis(300));
    d.create("vol", &opts(&[])).await.unwrap();
    for i in 0..5 {
        d.mount("vol", &format!("c{i}")).await.unwrap();
        d.unmount("vol", &format!("c{i}")).await.unwrap();
    }
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 1);
    assert_eq!(status(&d, "vol")["mounted"], true);
    // Remove ends the wait.
    d.remove("vol").await.unwrap();
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_state_write_rolls_the_mount_back() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d.store.refuse_writes();
    let e = d.mount("vol", "a").await.unwrap_err().to_string();
    assert!(e.contains("could not save its state"), "{e}");
    assert_eq!(holders(&d, "vol"), 0);
    assert_eq!(status(&d, "vol")["mounted"], false);
    assert_eq!(
        d.mounter.unmounts.load(Ordering::SeqCst),
        1,
        "the mount was undone"
    );
    assert!(d.create("new", &opts(&[])).await.is_err());
    assert!(d.get("new").is_err(), "memory follows the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_first_mounts_is_served_as_one_batch() {
    let env = Env::new();
    let m = FakeMounter::default();
    *m.delay.lock().unwrap() = Duration::from_millis(50);
    let d = env.driver(m, Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.mount("vol", &format!("id{}", i % 32)).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 1);
    assert_eq!(holders(&d, "vol"), 64, "32 IDs, each twice");
    stop(d).await;
    let (store, _) = Store::open(&env.dir.path().join("state")).unwrap();
    let rec = &store.records()["vol"];
    assert_eq!(rec.holders.len(), 32);
    assert!(rec.holders.values().all(|n| *n == 2));
}

/// Drop a driver once the tasks it spawned are done with it, so that its state folder's lock
/// is free for the next one (one daemon per state folder).
async fn stop(d: Arc<Driver<FakeMounter>>) {
    while Arc::strong_count(&d) > 1 {
        tokio::task::yield_now().await;
    }
    drop(d);
}

/// A driver on `env`'s state folder after a restart, with `m` as its mounter.
fn restarted(env: &Env, m: FakeMounter) -> Arc<Driver<FakeMounter>> {
    let (store, _) = Store::open(&env.dir.path().join("state")).unwrap();
    Driver::new(
        m,
        Box::new(OkChecker),
        Backends::open(&env.dir.path().join("backends.toml")),
        store,
        Settings {
            mount_root: env.dir.path().join("mnt"),
            unmount_delay: Duration::ZERO,
        },
    )
}

#[tokio::test]
async fn a_live_mount_is_adopted_with_the_backends_file_broken_or_the_options_refused() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d.create("odd", &opts(&[("bucket", "oddbucket")]))
        .await
        .unwrap();
    let t1 = d.mount("vol", "a").await.unwrap();
    let t2 = d.mount("odd", "b").await.unwrap();
    stop(d).await;
    // The record of `odd` as a newer version might write it; the backends file made too open.
    let (store, _) = Store::open(&env.dir.path().join("state")).unwrap();
    let mut rec = store.records()["odd"].clone();
    assert_eq!(
        rec.shared.as_deref(),
        Some("shared-oddbucket"),
        "mount name persisted"
    );
    rec.options.insert("colour".into(), "blue".into());
    store.update("odd", Some(rec), true).unwrap();
    drop(store);
    let cfg = env.dir.path().join("backends.toml");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();

    let m = FakeMounter::default();
    m.alive_after_restart.lock().unwrap().extend([t1, t2]);
    let d2 = restarted(&env, m);
    d2.restore().await;
    assert_eq!(d2.mounter.mounts.load(Ordering::SeqCst), 0);
    for name in ["vol", "odd"] {
        let st = status(&d2, name);
        assert_eq!(st["holders"], 1, "{name}: {st:?}");
        assert_eq!(st["health"], "ok", "{name}: {st:?}");
        assert!(
            st["problem"].is_string(),
            "{name} says why a new mount fails: {st:?}"
        );
    }
    let odd = status(&d2, "odd");
    assert!(
        odd["problem"].as_str().unwrap().contains("colour"),
        "{odd:?}"
    );
    assert_eq!(odd["bucket"], "oddbucket");
    // A second holder of a live mount needs no options; a refused volume gives its reason
    // only when a mount would have to be made.
    d2.mount("odd", "c").await.unwrap();
    for (name, id) in [("vol", "a"), ("odd", "b"), ("odd", "c")] {
        d2.unmount(name, id).await.unwrap();
    }
    assert_eq!(d2.mounter.unmounts.load(Ordering::SeqCst), 2);
    let e = d2.mount("odd", "d").await.unwrap_err().to_string();
    assert!(
        e.contains("cannot be mounted anew") && e.contains("colour"),
        "{e}"
    );
    assert!(d2.create("odd", &opts(&[])).await.is_err());
    d2.remove("odd").await.unwrap();
    stop(d2).await;
    assert!(!restarted(&env, FakeMounter::default())
        .list()
        .iter()
        .any(|v| v.name == "odd"));
}

#[tokio::test]
async fn a_mount_whose_caller_went_away_is_not_counted() {
    let env = Env::new();
    let m = FakeMounter::default();
    *m.delay.lock().unwrap() = Duration::from_millis(300);
    let d = env.driver(m, Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    let d1 = Arc::clone(&d);
    let stays = tokio::spawn(async move { d1.mount("vol", "stays").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The caller gives up while the first mount is still under way.
    let gone = tokio::time::timeout(Duration::from_millis(50), d.mount("vol", "gone")).await;
    assert!(gone.is_err());
    stays.await.unwrap().unwrap();
    assert_eq!(holders(&d, "vol"), 1);
    d.unmount("vol", "stays").await.unwrap();
    assert_eq!(
        d.mounter.unmounts.load(Ordering::SeqCst),
        1,
        "no holder left behind"
    );
    // The same when the caller leaves before the first mount: nothing stays mounted.
    let gone = tokio::time::timeout(Duration::from_millis(50), d.mount("vol", "gone2")).await;
    assert!(gone.is_err());
    *d.mounter.delay.lock().unwrap() = Duration::ZERO;
    d.mount("vol", "x").await.unwrap();
    assert_eq!(holders(&d, "vol"), 1);
    d.unmount("vol", "x").await.unwrap();
    assert_eq!(status(&d, "vol")["mounted"], false);
}

#[tokio::test]
async fn a_slow_mount_is_left_alone_and_a_dead_one_repaired() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    let t = d.mount("vol", "a").await.unwrap();
    d.mounter
        .mounted
        .lock()
        .unwrap()
        .insert(t.clone(), Health::Slow);
    d.check_health().await;
    assert_eq!(status(&d, "vol")["health"], "slow");
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 0);
    d.mounter.kill(&t);
    d.check_health().await;
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 1);
    assert_eq!(d.mounter.mounts.load(Ordering::SeqCst), 2);
    assert_eq!(status(&d, "vol")["health"], "ok");
    d.unmount("vol", "a").await.unwrap();
}

#[tokio::test]
async fn restore_marks_itself_finished() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::ZERO);
    d.create("vol", &opts(&[])).await.unwrap();
    d.mount("vol", "a").await.unwrap();
    stop(d).await;
    let d2 = restarted(&env, FakeMounter::default());
    d2.restore().await;
    tokio::time::timeout(Duration::from_secs(1), d2.restored())
        .await
        .expect("restore says it finished");
    // Not adopted (the fake finds nothing alive), so mounted again.
    assert_eq!(d2.mounter.mounts.load(Ordering::SeqCst), 1);
    d2.unmount("vol", "a").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_returning_holder_cancels_the_delayed_unmount_and_the_last_one_starts_it_again() {
    let env = Env::new();
    let d = env.driver(FakeMounter::default(), Duration::from_secs(30));
    d.create("vol", &opts(&[])).await.unwrap();
    d.mount("vol", "a").await.unwrap();
    d.unmount("vol", "a").await.unwrap();
    let pending = |d: &Driver<FakeMounter>| {
        d.volume("vol")
            .unwrap()
            .state
            .try_lock()
            .map(|st| st.pending_release.is_some())
            .unwrap()
    };
    assert!(pending(&d));
    tokio::time::sleep(Duration::from_secs(20)).await;
    d.mount("vol", "b").await.unwrap();
    assert!(!pending(&d), "a new holder cancels the wait");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        d.mounter.unmounts.load(Ordering::SeqCst),
        0,
        "the cancelled timer did not fire"
    );
    d.unmount("vol", "b").await.unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        d.mounter.unmounts.load(Ordering::SeqCst),
        0,
        "the new wait is a full delay"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(d.mounter.unmounts.load(Ordering::SeqCst), 1);
    assert!(!pending(&d));
    assert_eq!(status(&d, "vol")["mounted"], false);
}
