//! Restarts and outages: Get and List with the object store down, the daemon killed and
//! restarted under a mount, a killed s3fs found and mounted again by the next Mount.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::{one_s3fs, wait_unmounted};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn get_and_list_answer_while_the_object_store_is_down() {
    if !prereqs("get_and_list_answer_while_the_object_store_is_down") {
        return;
    }
    let srv = S3Server::start_private();
    let mut d = Daemon::start(&srv);
    let b = new_bucket(&srv, "down");
    srv.s3().put(&b, "f.txt", b"still here").unwrap();
    let vol = unique_name("down-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);

    srv.stop();
    let check = |d: &Daemon, when: &str| {
        let st = d
            .status(&vol)
            .unwrap_or_else(|e| panic!("Get {when} failed: {e}\n{}", d.logs_tail(40)));
        assert_eq!(
            st.get("bucket").and_then(Value::as_str),
            Some(b.as_str()),
            "Get {when}: {st}"
        );
        assert!(
            d.list_names().contains(&vol),
            "List {when} lacks the volume"
        );
    };
    check(&d, "with the object store down");

    // A Mount that cannot work fails, and leaves nothing behind (Docker sends no Unmount).
    let e = d
        .mount(&vol, &new_id())
        .expect_err("Mount succeeded with the object store down");
    assert!(!e.is_empty());
    assert!(
        d.mounts().is_empty() && d.s3fs_pids().is_empty(),
        "a failed Mount left {:?} {:?}",
        d.mounts(),
        d.s3fs_pids()
    );
    let st = status(&d, &vol);
    assert!(
        !mounted(&st) && holders(&st) == 0,
        "a failed Mount counted a holder: {st}"
    );

    // dockerd calls Get for every volume when it starts: a restarted daemon must answer too.
    d.kill9();
    d.restart();
    check(&d, "after a restart with the object store down");

    srv.start();
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(fs::read(mp.join("f.txt")).unwrap(), b"still here");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn daemon_killed_and_restarted_keeps_mount_and_holders() {
    let Some((s3, mut d)) = setup("daemon_killed_and_restarted_keeps_mount_and_holders") else {
        return;
    };
    let b = new_bucket(s3, "restart");
    let vol = unique_name("restart-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let (a, bb) = (new_id(), new_id());
    let mp = mount_ok(&d, &vol, &a);
    mount_ok(&d, &vol, &bb);
    fs::write(mp.join("before.txt"), b"before").unwrap();
    let pid = one_s3fs(&d);

    d.kill9();
    assert!(process_alive(pid), "s3fs died with the daemon");
    assert!(
        is_mountpoint(&mp) && statvfs_ok(&mp),
        "the mount broke when the daemon died"
    );
    assert_eq!(fs::read(mp.join("before.txt")).unwrap(), b"before");

    d.restart();
    assert!(
        d.list_names().contains(&vol),
        "the restarted daemon lost the volume"
    );
    // Restore runs in the background once the socket answers: wait for it to adopt.
    let st = poll(Duration::from_secs(20), || {
        let st = d.status(&vol).ok()?;
        mounted(&st).then_some(st)
    })
    .unwrap_or_else(|| panic!("after restart: {:?}\n{}", d.status(&vol), d.logs_tail(40)));
    assert_eq!(holders(&st), 2, "after restart: {st}");
    assert_eq!(
        d.s3fs_pids(),
        vec![pid],
        "the restarted daemon did not keep the live s3fs"
    );
    // A new holder joins the adopted mount.
    let c = new_id();
    mount_ok(&d, &vol, &c);
    assert_eq!(
        d.s3fs_pids(),
        vec![pid],
        "a Mount after restart started a second s3fs"
    );
    fs::write(mp.join("after.txt"), b"after").unwrap();
    s3_poll(s3, &b, "after.txt", b"after", Duration::from_secs(10));
    unmount_ok(&d, &vol, &c);
    unmount_ok(&d, &vol, &a);
    assert!(
        is_mountpoint(&mp) && process_alive(pid),
        "unmounted while the old holder B still holds it"
    );
    assert_eq!(holders(&status(&d, &vol)), 1);
    unmount_ok(&d, &vol, &bb);
    wait_unmounted(&d, &mp);
    assert!(
        !process_alive(pid),
        "the adopted s3fs {pid} still runs after the last Unmount"
    );
    let st = status(&d, &vol);
    assert!(!mounted(&st) && holders(&st) == 0, "{st}");
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_killed_s3fs_is_detected_and_the_next_mount_remounts() {
    let Some((s3, d)) = setup("a_killed_s3fs_is_detected_and_the_next_mount_remounts") else {
        return;
    };
    let b = new_bucket(s3, "stale");
    let vol = unique_name("stale-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let a = new_id();
    let mp = mount_ok(&d, &vol, &a);
    fs::write(mp.join("one.txt"), b"one").unwrap();
    let pid = one_s3fs(&d);
    sigkill(pid).unwrap();
    wait_for("s3fs to die", Duration::from_secs(10), || {
        (!process_alive(pid)).then_some(())
    });

    let mut last = Value::Null;
    let stale = poll(Duration::from_secs(20), || {
        last = status(&d, &vol);
        (last.get("health").and_then(Value::as_str) == Some("stale")).then_some(())
    });
    assert!(
        stale.is_some(),
        "Get never showed health \"stale\" after s3fs was killed; last Status: {last}"
    );

    let bb = new_id();
    let mp2 = mount_ok(&d, &vol, &bb);
    assert_eq!(mp, mp2);
    assert!(
        statvfs_ok(&mp),
        "the mount after the remount does not answer statvfs"
    );
    fs::write(mp.join("two.txt"), b"two").unwrap();
    assert_eq!(fs::read(mp.join("two.txt")).unwrap(), b"two");
    assert_eq!(fs::read(mp.join("one.txt")).unwrap(), b"one");
    s3_poll(s3, &b, "two.txt", b"two", Duration::from_secs(10));
    let new_pid = one_s3fs(&d);
    assert_ne!(new_pid, pid);
    assert_eq!(
        mounts_under(&mp).len(),
        1,
        "stacked mounts after the remount: {:?}",
        mounts_under(&mp)
    );
    let st = status(&d, &vol);
    assert_eq!(health(&st), "ok", "{st}");
    assert_eq!(holders(&st), 2, "{st}");
    unmount_ok(&d, &vol, &a);
    assert!(is_mountpoint(&mp));
    unmount_ok(&d, &vol, &bb);
    wait_unmounted(&d, &mp);
}
