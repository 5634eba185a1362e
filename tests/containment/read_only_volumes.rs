//! Read-only volumes: one never creates its prefix, stays read-only when a runtime remounts a bind
//! of it without read-only, and one an older version bound to a writable s3fs is adopted as it is.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use crate::table;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_never_creates_its_prefix() {
    let Some((s3, d)) = setup("a_read_only_volume_never_creates_its_prefix") else {
        return;
    };
    let b = new_bucket(s3, "roprefix");
    // A writable volume of the bucket is mounted beside it (its s3fs writable; the ro one
    // gets an s3fs of its own, read-only): neither may make the prefix.
    let w = unique_name("rw");
    create_ok(&d, &w, &[("bucket", &b)]);
    let id = new_id();
    let wmp = mount_ok(&d, &w, &id);
    let ro = unique_name("ro");
    create_ok(
        &d,
        &ro,
        &[("bucket", &b), ("prefix", "missing/deeper"), ("ro", "true")],
    );
    let before = table(&d);
    let e = d
        .mount(&ro, &new_id())
        .expect_err("ro Mount of a missing prefix succeeded");
    assert!(e.contains("read-only volume never creates it"), "{e}");
    assert!(
        e.contains("\"missing\""),
        "the Err does not name the component: {e}"
    );
    assert_eq!(table(&d), before);
    assert!(!wmp.join("missing").exists());
    assert!(s3.s3().list(&b, Some("missing")).unwrap().is_empty());
    // Made by a writer, it mounts.
    fs::create_dir_all(wmp.join("missing/deeper")).unwrap();
    let id2 = new_id();
    mount_ok(&d, &ro, &id2);
    unmount_ok(&d, &ro, &id2);
    unmount_ok(&d, &w, &id);
}

/// The shared s3fs mounts of this daemon: `(read-only ones, writable ones)` by their names.
fn shared_mounts(d: &Daemon) -> (Vec<MountEntry>, Vec<MountEntry>) {
    let shared = d.mount_root.join(".s3fs");
    d.mounts()
        .into_iter()
        .filter(|m| m.mount_point.parent() == Some(shared.as_path()))
        .partition(|m| m.mount_point.to_string_lossy().contains("-ro-"))
}

/// A new bucket holding `data/seed.txt`, and a writable and a read-only volume of its prefix
/// `data`, both mounted: the writable one wrote `from-rw.txt` before the read-only one was
/// mounted. Returns the bucket and `[(volume, holder ID, mount point)]`, writable first.
fn rw_and_ro_of_one_prefix(
    s3: &S3Server,
    d: &Daemon,
    tag: &str,
) -> (String, [(String, String, PathBuf); 2]) {
    let b = new_bucket(s3, tag);
    s3.s3().put(&b, "data/seed.txt", b"seed\n").unwrap();
    let (w, r) = (unique_name("rw"), unique_name("ro"));
    create_ok(d, &w, &[("bucket", &b), ("prefix", "data")]);
    create_ok(d, &r, &[("bucket", &b), ("prefix", "data"), ("ro", "true")]);
    let (iw, ir) = (new_id(), new_id());
    let wmp = mount_ok(d, &w, &iw);
    fs::write(wmp.join("from-rw.txt"), b"written\n").unwrap();
    let rmp = mount_ok(d, &r, &ir);
    (b, [(w, iw, wmp), (r, ir, rmp)])
}

/// Every way `dir` could be written to by root fails with EROFS: a new file, a folder, an
/// existing file opened for writing, its removal.
fn assert_every_write_is_erofs(dir: &Path, existing: &str) {
    let erofs = Some(nix::errno::Errno::EROFS as i32);
    let tries: [(&str, std::io::Result<()>); 4] = [
        ("create a file", fs::write(dir.join("new.txt"), b"no")),
        ("make a folder", fs::create_dir(dir.join("newdir"))),
        (
            "open a file for writing",
            fs::OpenOptions::new()
                .append(true)
                .open(dir.join(existing))
                .map(drop),
        ),
        ("remove a file", fs::remove_file(dir.join(existing))),
    ];
    for (what, r) in tries {
        match r {
            Err(e) if e.raw_os_error() == erofs => {}
            other => panic!("{what} in {}: {other:?}, not EROFS", dir.display()),
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_stays_read_only_when_a_runtime_remounts_a_bind_of_it() {
    let Some((s3, d)) = setup("a_read_only_volume_stays_read_only_when_a_runtime_remounts") else {
        return;
    };
    // A writable and a read-only volume of the same bucket and prefix, mounted at once.
    let (b, [(w, iw, wmp), (r, ir, rmp)]) = rw_and_ro_of_one_prefix(s3, &d, "rofs");
    assert_eq!(fs::read(rmp.join("seed.txt")).unwrap(), b"seed\n");
    assert_eq!(fs::read(rmp.join("from-rw.txt")).unwrap(), b"written\n");
    // Two identities, two s3fs processes; the read-only one's superblock is read-only.
    assert_eq!(d.s3fs_pids().len(), 2, "{:?}", d.mounts());
    let (ro_shared, rw_shared) = shared_mounts(&d);
    assert_eq!(
        (ro_shared.len(), rw_shared.len()),
        (1, 1),
        "{:?}",
        d.mounts()
    );
    let (ro_shared, rw_shared) = (&ro_shared[0], &rw_shared[0]);
    assert!(
        ro_shared.super_has("ro") && ro_shared.has("ro"),
        "{ro_shared:?}"
    );
    assert!(
        rw_shared.super_has("rw") && rw_shared.has("rw"),
        "{rw_shared:?}"
    );
    let (rm, wm) = (mount_at(&rmp).unwrap(), mount_at(&wmp).unwrap());
    assert!(rm.super_has("ro") && rm.has("ro"), "{rm:?}");
    assert!(wm.super_has("rw") && wm.has("rw"), "{wm:?}");
    // Every mount the daemon made (s3fs mounts, volume binds, the private staging mount of
    // read-only binds) is nosuid and nodev.
    let made = d.all_mounts();
    let stage = d.state_dir.join("stage");
    for p in [
        &ro_shared.mount_point,
        &rw_shared.mount_point,
        &rmp,
        &wmp,
        &stage,
    ] {
        assert!(
            made.iter().any(|m| m.mount_point == *p),
            "{p:?} in {made:?}"
        );
    }
    for m in &made {
        assert!(m.has("nosuid") && m.has("nodev"), "{m:?}");
    }

    // What runc and crun do for a container: bind the volume, then remount that bind to add
    // nosuid,nodev with mount(2), which sets every per-mount flag at once and so clears its
    // read-only flag. Called directly: mount(8)'s `-o remount,bind,nosuid,nodev` merges the
    // mount's current `ro` back in (util-linux 2.38), runc does not. Done here by hand to a
    // bind elsewhere on the host, and to the volume's own mount point.
    let runtime_bind = d.dir.join("runtime-bind");
    let _bound = mount_guarded(&runtime_bind, &[Path::new("--bind"), &rmp]);
    for p in [&runtime_bind, &rmp] {
        use nix::mount::MsFlags;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(None::<&str>, p.as_path(), None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("remount of {}: {e}", p.display()));
        let m = mount_at(p).unwrap();
        assert!(
            m.has("rw") && m.super_has("ro"),
            "the remount did not clear the bind's read-only flag, or the superblock is writable: {m:?}"
        );
    }
    for p in [&runtime_bind, &rmp, &ro_shared.mount_point] {
        let existing = if *p == ro_shared.mount_point {
            "data/seed.txt"
        } else {
            "seed.txt"
        };
        assert_every_write_is_erofs(p, existing);
        assert_eq!(fs::read(p.join(existing)).unwrap(), b"seed\n");
    }
    // The writable volume still writes; the bucket holds what it wrote and nothing else.
    fs::write(wmp.join("again.txt"), b"again\n").unwrap();
    let mut keys = s3.s3().list(&b, None).unwrap();
    keys.retain(|k| !k.ends_with('/'));
    assert_eq!(
        keys,
        vec!["data/again.txt", "data/from-rw.txt", "data/seed.txt"]
    );
    drop(_bound);
    unmount_ok(&d, &r, &ir);
    unmount_ok(&d, &w, &iw);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_an_older_version_bound_to_a_writable_s3fs_is_adopted_and_served() {
    let Some((s3, mut d)) = setup("a_read_only_volume_an_older_version_bound") else {
        return;
    };
    let (_, [(w, iw, wmp), (r, ir, rmp)]) = rw_and_ro_of_one_prefix(s3, &d, "roupgrade");
    let (_, rw_shared) = shared_mounts(&d);
    let rw_pids = s3fs_pids_mentioning(&rw_shared[0].mount_point);
    assert_eq!(rw_pids.len(), 1);

    // The daemon dies; the ro volume's mount is made what versions before this one made: a
    // bind of the bucket's writable s3fs, remounted read-only (and without nosuid,nodev).
    d.kill9();
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    umount2(&rmp, MntFlags::empty()).unwrap();
    let source = rw_shared[0].mount_point.join("data");
    mount(
        Some(&source),
        &rmp,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, &rmp, None::<&str>, ro, None::<&str>).unwrap();

    // The upgraded daemon adopts it and serves it as it is (never taken away from its
    // holder); the read-only s3fs that nothing holds any more is swept.
    d.restart();
    let adopted = poll(Duration::from_secs(20), || {
        let st = d.status(&r).ok()?;
        (mounted(&st) && holders(&st) == 1 && d.s3fs_pids() == rw_pids).then_some(())
    });
    assert!(
        adopted.is_some(),
        "after the restart: {:?}, s3fs {:?} (want {rw_pids:?})\n{}",
        d.status(&r),
        d.s3fs_pids(),
        d.logs_tail(40)
    );
    assert_eq!(health(&status(&d, &r)), "ok");
    let m = mount_at(&rmp).unwrap();
    assert!(m.has("ro") && m.super_has("rw"), "not the old bind: {m:?}");
    assert_eq!(fs::read(rmp.join("seed.txt")).unwrap(), b"seed\n");
    assert_every_write_is_erofs(&rmp, "seed.txt");
    fs::write(wmp.join("after.txt"), b"after\n").unwrap();

    // Its last holder gone, its next Mount gets the new scheme: an s3fs of its own, read-only.
    unmount_ok(&d, &r, &ir);
    assert_eq!(d.s3fs_pids(), rw_pids, "the writable volume's s3fs changed");
    let ir2 = new_id();
    let rmp = mount_ok(&d, &r, &ir2);
    let (ro_shared, _) = shared_mounts(&d);
    assert_eq!(ro_shared.len(), 1, "{:?}", d.mounts());
    assert!(ro_shared[0].super_has("ro"), "{:?}", ro_shared[0]);
    assert!(mount_at(&rmp).unwrap().super_has("ro"));
    assert_eq!(fs::read(rmp.join("after.txt")).unwrap(), b"after\n");
    assert_eq!(d.s3fs_pids().len(), 2);
    unmount_ok(&d, &r, &ir2);
    unmount_ok(&d, &w, &iw);
}
