//! The object store down: Create and Mount fail in bounded time and leave nothing, Get and List
//! answer at once, and the mount made before the outage works again when the store is back.

use std::fs;
use std::time::{Duration, Instant};

use crate::s3fs_of_bucket;
use crate::support::*;

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
