//! Holders and the shared s3fs: IDs and volumes of a bucket share one s3fs, `compat-dir=false`
//! runs its own, the same ID twice needs two Unmounts, the last Unmount ends s3fs.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use crate::{one_s3fs, wait_unmounted};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn two_ids_share_one_s3fs() {
    let Some((s3, d)) = setup("two_ids_share_one_s3fs") else {
        return;
    };
    let b = new_bucket(s3, "share");
    let vol = unique_name("share-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let (a, bb) = (new_id(), new_id());
    let mp = mount_ok(&d, &vol, &a);
    let pid = one_s3fs(&d);
    let mp2 = mount_ok(&d, &vol, &bb);
    assert_eq!(mp, mp2);
    assert_eq!(
        d.s3fs_pids(),
        vec![pid],
        "a second Mount started another s3fs"
    );
    assert_eq!(
        mounts_under(&mp).len(),
        1,
        "the volume is mounted twice: {:?}",
        mounts_under(&mp)
    );
    let st = status(&d, &vol);
    assert_eq!(holders(&st), 2, "{st}");
    fs::write(mp.join("x"), b"x").unwrap();
    unmount_ok(&d, &vol, &a);
    assert!(is_mountpoint(&mp), "unmounted while ID B still holds it");
    assert!(process_alive(pid), "s3fs exited while ID B still holds it");
    assert_eq!(fs::read(mp.join("x")).unwrap(), b"x");
    assert_eq!(holders(&status(&d, &vol)), 1);
    unmount_ok(&d, &vol, &bb);
    wait_unmounted(&d, &mp);
    assert_eq!(holders(&status(&d, &vol)), 0);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn compat_dir_false_runs_its_own_s3fs_and_serves_what_the_mount_wrote() {
    let Some((s3, d)) = setup("compat_dir_false_runs_its_own_s3fs_and_serves_what_the_mount_wrote")
    else {
        return;
    };
    let b = new_bucket(s3, "compat");
    let (plain, fast) = (unique_name("compat-on"), unique_name("compat-off"));
    create_ok(&d, &plain, &[("bucket", &b)]);
    create_ok(&d, &fast, &[("bucket", &b), ("compat-dir", "false")]);
    let (a, bb) = (new_id(), new_id());
    let mp_plain = mount_ok(&d, &plain, &a);
    let mp_fast = mount_ok(&d, &fast, &bb);
    // Different s3fs settings never share a process.
    let pids = d.s3fs_pids();
    let with_flag: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| cmdline(*p).iter().any(|a| a.contains("notsup_compat_dir")))
        .collect();
    assert!(
        pids.len() == 2 && with_flag.len() == 1,
        "expected two s3fs, one with notsup_compat_dir: {:?}",
        pids.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    fs::create_dir(mp_fast.join("dir")).unwrap();
    fs::write(mp_fast.join("dir/f.txt"), b"fast").unwrap();
    assert_eq!(
        s3.s3().get(&b, "dir/f.txt").unwrap().as_deref(),
        Some(&b"fast"[..])
    );
    unmount_ok(&d, &fast, &bb);
    wait_for(
        "the compat-dir=false s3fs to exit",
        Duration::from_secs(10),
        || (d.s3fs_pids().len() == 1).then_some(()),
    );
    // A fresh s3fs with the option finds the folder and the file the mount made.
    let mp_fast = mount_ok(&d, &fast, &bb);
    assert_eq!(fs::read(mp_fast.join("dir/f.txt")).unwrap(), b"fast");
    assert_eq!(fs::read(mp_plain.join("dir/f.txt")).unwrap(), b"fast");
    unmount_ok(&d, &fast, &bb);
    unmount_ok(&d, &plain, &a);
    wait_unmounted(&d, &mp_plain);
    wait_unmounted(&d, &mp_fast);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_same_id_twice_needs_two_unmounts() {
    let Some((s3, d)) = setup("the_same_id_twice_needs_two_unmounts") else {
        return;
    };
    let b = new_bucket(s3, "sameid");
    let vol = unique_name("sameid-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let pid = one_s3fs(&d);
    mount_ok(&d, &vol, &id); // docker cp on a running container mounts again with the same ID
    assert_eq!(d.s3fs_pids(), vec![pid]);
    assert_eq!(holders(&status(&d, &vol)), 2);
    unmount_ok(&d, &vol, &id);
    assert!(
        is_mountpoint(&mp),
        "the first of two Unmounts of one ID unmounted the volume"
    );
    assert!(process_alive(pid));
    assert!(
        statvfs_ok(&mp),
        "mount no longer answers after the first Unmount"
    );
    let st = status(&d, &vol);
    assert!(mounted(&st) && holders(&st) == 1, "{st}");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_last_unmount_unmounts_and_s3fs_exits() {
    let Some((s3, d)) = setup("the_last_unmount_unmounts_and_s3fs_exits") else {
        return;
    };
    let b = new_bucket(s3, "last");
    let vol = unique_name("last-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let pid = one_s3fs(&d);
    let args = cmdline(pid);
    let root = d.mount_root.to_string_lossy().into_owned();
    assert!(
        args.iter()
            .any(|a| a == &*mp.to_string_lossy() || a.starts_with(&format!("{root}/.s3fs/"))),
        "s3fs argv mentions neither the mountpoint nor <mount-root>/.s3fs/: {args:?}"
    );
    assert!(
        args.iter().any(|a| a == "-f"),
        "s3fs does not run in the foreground (-f): {args:?}"
    );
    assert_eq!(
        ppid(pid),
        d.pid(),
        "s3fs {pid} is not a child of the daemon"
    );
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    // The daemon reaps its child: no zombie left either.
    let reaped = poll(Duration::from_secs(10), || {
        proc_state(pid).is_none().then_some(())
    });
    assert!(
        reaped.is_some(),
        "s3fs {pid} not reaped (state {:?})",
        proc_state(pid)
    );
    let st = status(&d, &vol);
    assert!(!mounted(&st), "{st}");
    assert_eq!(holders(&st), 0, "{st}");
    assert_eq!(health(&st), "not mounted", "{st}");
    // Mounting again works.
    let id2 = new_id();
    let mp = mount_ok(&d, &vol, &id2);
    fs::write(mp.join("again"), b"again").unwrap();
    unmount_ok(&d, &vol, &id2);
    wait_unmounted(&d, &mp);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn concurrent_mounts_of_one_volume_share_one_s3fs() {
    let Some((s3, d)) = setup("concurrent_mounts_of_one_volume_share_one_s3fs") else {
        return;
    };
    let b = new_bucket(s3, "concur");
    let vol = unique_name("concur-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let ids: Vec<String> = (0..6).map(|_| new_id()).collect();
    let results: Vec<Result<PathBuf, String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = ids
            .iter()
            .map(|id| sc.spawn(|| d.mount(&vol, id)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(
            r.as_ref().map_err(|e| e.clone()),
            Ok(&d.mountpoint_of(&vol)),
            "a concurrent Mount: {r:?}"
        );
    }
    one_s3fs(&d);
    assert_eq!(
        mounts_under(&d.mountpoint_of(&vol)).len(),
        1,
        "{:?}",
        mounts_under(&d.mountpoint_of(&vol))
    );
    assert_eq!(holders(&status(&d, &vol)), 6);
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = ids
            .iter()
            .map(|id| sc.spawn(|| d.unmount(&vol, id)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results.iter().all(Result::is_ok),
        "concurrent Unmounts: {results:?}"
    );
    wait_unmounted(&d, &d.mountpoint_of(&vol));
    assert_eq!(holders(&status(&d, &vol)), 0);
}
