//! A read-only or full state folder: changes are refused naming the state file, live mounts stay,
//! the store is left as it was.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::s3fs_of_bucket;
use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn read_only_state_folder_refuses_changes_and_keeps_the_file() {
    let Some((s3, d)) = setup("read_only_state_folder_refuses_changes_and_keeps_the_file") else {
        return;
    };
    let b1 = new_bucket(s3, "rostate1");
    let b2 = new_bucket(s3, "rostate2");
    let v1 = unique_name("rostate-v1");
    let v2 = unique_name("rostate-v2");
    create_ok(&d, &v1, &[("bucket", &b1)]);
    create_ok(&d, &v2, &[("bucket", &b2)]);
    let a = new_id();
    let mp1 = mount_ok(&d, &v1, &a);
    let state_file = store_path(&d.state_dir);
    let before = store_rows(&d.state_dir).expect("store");

    // Read-only for the files the daemon holds open too (a read-only bind mount would only
    // stop new opens): the folder and every file in it immutable.
    let sd = d.state_dir.to_str().unwrap().to_string();
    let guard = Immutable::set(&d.state_dir);
    assert!(
        fs::write(d.state_dir.join("probe"), b"x").is_err(),
        "the state folder is still writable"
    );

    // A new holder of a mounted volume: refused, naming the state file.
    let e = d
        .mount(&v1, &new_id())
        .expect_err("Mount succeeded with a read-only state folder");
    assert!(
        e.contains(&state_file.display().to_string()),
        "the Err does not name the state file {}: {e}",
        state_file.display()
    );
    let st = status(&d, &v1);
    assert!(
        holders(&st) == 1 && mounted(&st) && statvfs_ok(&mp1),
        "the refused Mount changed {v1}: {st}"
    );
    // An Unmount cannot be recorded either: refused, the holder stays.
    let e = d
        .unmount(&v1, &a)
        .expect_err("Unmount succeeded with a read-only state folder");
    assert!(
        e.contains(&sd),
        "the Err does not name the state folder: {e}"
    );
    let st = status(&d, &v1);
    assert!(
        holders(&st) == 1 && mounted(&st) && statvfs_ok(&mp1),
        "the refused Unmount changed {v1}: {st}"
    );
    // The first Mount of a volume: refused, nothing mounted, nothing left.
    let e = d
        .mount(&v2, &new_id())
        .expect_err("Mount succeeded with a read-only state folder");
    assert!(
        e.contains(&sd),
        "the Err does not name the state folder {sd}: {e}"
    );
    let mp2 = d.mountpoint_of(&v2);
    let clean = poll(Duration::from_secs(10), || {
        (s3fs_of_bucket(&d, &b2).is_empty() && !is_mountpoint(&mp2)).then_some(())
    });
    assert!(
        clean.is_some(),
        "the refused Mount left s3fs {:?} / mount {}",
        s3fs_of_bucket(&d, &b2),
        is_mountpoint(&mp2)
    );
    let st = status(&d, &v2);
    assert!(holders(&st) == 0 && !mounted(&st), "{st}");
    assert_eq!(
        store_rows(&d.state_dir).expect("store"),
        before,
        "the store changed"
    );
    say(&format!("read-only state folder: Mount said: {e}"));

    drop(guard);
    // Writable again: everything works and the file follows.
    let b = new_id();
    mount_ok(&d, &v2, &b);
    assert_eq!(holders(&status(&d, &v2)), 1);
    unmount_ok(&d, &v2, &b);
    unmount_ok(&d, &v1, &a);
    wait_all_unmounted(&d);
    let (after, _) = store_rows(&d.state_dir).expect("store");
    assert!(
        after.values().all(|r| !r.contains(&a)),
        "the store still lists the unmounted ID: {after:?}"
    );
}

/// `chattr +i` on a folder and the files in it (writes fail even through open files); undone
/// on drop (also when the test fails).
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(dir: &Path) -> Immutable {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        paths.push(dir.to_path_buf());
        let guard = Immutable(paths);
        for p in &guard.0 {
            run_ok(Command::new("chattr").arg("+i").arg(p));
        }
        guard
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn full_state_folder_refuses_changes_and_keeps_the_file() {
    let Some((s3, mut d)) = setup("full_state_folder_refuses_changes_and_keeps_the_file") else {
        return;
    };
    let b1 = new_bucket(s3, "fullstate");
    let v1 = unique_name("fullstate-v1");
    create_ok(&d, &v1, &[("bucket", &b1)]);
    d.stop();
    // Move the state onto a tiny tmpfs.
    let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&d.state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| (e.file_name().into(), fs::read(e.path()).unwrap()))
        .collect();
    let guard = mount_guarded(
        &d.state_dir,
        &["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"],
    );
    // s3fs stages open files in <state>/tmp and needs room there to start: give it a disk
    // of its own (the guard's lazy unmount takes it along).
    let tmp = d.state_dir.join("tmp");
    fs::create_dir(&tmp).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2g,mode=0700", "tmpfs"])
            .arg(&tmp),
    );
    for (name, bytes) in &saved {
        fs::write(d.state_dir.join(name), bytes).unwrap();
        // As private as the daemon made them (it refuses an open key file).
        fs::set_permissions(d.state_dir.join(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let state_file = store_path(&d.state_dir);
    let before = store_rows(&d.state_dir).expect("store");
    d.restart();
    // The s3fs log folder exists before the disk is full (so that s3fs can start).
    let a = new_id();
    mount_ok(&d, &v1, &a);
    let after_mount = store_rows(&d.state_dir).expect("store");
    // Fill the disk.
    {
        let mut f = fs::File::create(d.state_dir.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        let mut n = 0;
        while f.write_all(&chunk).is_ok() {
            n += 1;
            assert!(n < 10_000, "a 512k tmpfs took more than 40 MB");
        }
        let _ = f.sync_all();
        // Also the last bytes a small write could use.
        while f.write_all(&[0u8; 1]).is_ok() {}
    }
    let e = d
        .mount(&v1, &new_id())
        .expect_err("Mount succeeded with a full state folder");
    assert!(
        e.contains(&state_file.display().to_string()),
        "the Err does not name the state file: {e}"
    );
    let st = status(&d, &v1);
    assert!(holders(&st) == 1 && mounted(&st), "{st}");
    assert_eq!(
        store_rows(&d.state_dir).expect("store"),
        after_mount,
        "the store changed on a full disk"
    );
    assert_ne!(before, after_mount);
    // Space again: the holder leaves and the file follows.
    fs::remove_file(d.state_dir.join("filler")).unwrap();
    unmount_ok(&d, &v1, &a);
    wait_all_unmounted(&d);
    d.stop();
    drop(guard);
}
