//! The real `bai-s3 serve`, spoken to over its unix socket as dockerd does, mounting real s3fs
//! against a real SeaweedFS. Every test has its own daemon (own socket, state and mount root);
//! the tests of this binary share one SeaweedFS, except the one that needs it stopped.
mod support;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const EROFS: i32 = 30;

/// A status value that is a boolean, or a string "true"/"false".
fn boolish(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Waits until `mp` is no longer a mount point and no s3fs of the daemon is alive.
fn wait_unmounted(d: &Daemon, mp: &Path) {
    let done = poll(Duration::from_secs(15), || {
        (!is_mountpoint(mp) && d.s3fs_pids().is_empty()).then_some(())
    });
    assert!(
        done.is_some(),
        "after the last Unmount: mounted={} s3fs={:?}\n{}",
        is_mountpoint(mp),
        d.s3fs_pids(),
        d.logs_tail(40)
    );
}

fn one_s3fs(d: &Daemon) -> i32 {
    let pids = d.s3fs_pids();
    assert_eq!(
        pids.len(),
        1,
        "expected exactly one s3fs for the daemon, found {pids:?}"
    );
    pids[0]
}

fn read_poll(path: &Path, want: &[u8]) {
    let got = poll(Duration::from_secs(10), || match fs::read(path) {
        Ok(b) if b == want => Some(()),
        _ => None,
    });
    if got.is_none() {
        panic!(
            "{} does not read back {:?}: {:?}",
            path.display(),
            String::from_utf8_lossy(want),
            fs::read(path)
        );
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn activate_capabilities_create_get_list_remove() {
    let Some((s3, d)) = setup("activate_capabilities_create_get_list_remove") else {
        return;
    };
    let (st, v) = d.activate();
    assert_eq!(st, 200, "Plugin.Activate: {v}");
    assert!(
        v.get("Implements")
            .and_then(Value::as_array)
            .map(|a| a.iter().any(|x| x == "VolumeDriver"))
            .unwrap_or(false),
        "Plugin.Activate does not implement VolumeDriver: {v}"
    );
    let (st, v) = d.capabilities();
    assert_eq!(st, 200);
    assert_eq!(
        v.pointer("/Capabilities/Scope").and_then(Value::as_str),
        Some("local"),
        "Capabilities: {v}"
    );

    let b = new_bucket(s3, "basic");
    let vol = unique_name("basic-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let g = d.get(&vol).unwrap();
    assert_eq!(
        g.get("Name").and_then(Value::as_str),
        Some(vol.as_str()),
        "Get: {g}"
    );
    if let Some(mp) = g.get("Mountpoint").and_then(Value::as_str) {
        assert!(
            mp.is_empty() || Path::new(mp) == d.mountpoint_of(&vol),
            "Get Mountpoint {mp}"
        );
    }
    if let Some(c) = g.get("CreatedAt") {
        let c = c.as_str().unwrap_or_default();
        // Docker decodes it as a Go time: RFC 3339, never an empty string.
        assert!(
            c.len() >= 20 && c.as_bytes()[4] == b'-' && c.as_bytes()[10] == b'T',
            "CreatedAt is not RFC 3339: {c:?}"
        );
    }
    let st = g.get("Status").cloned().unwrap_or(Value::Null);
    assert_eq!(
        st.get("bucket").and_then(Value::as_str),
        Some(b.as_str()),
        "Status: {st}"
    );
    assert_eq!(
        st.get("backend").and_then(Value::as_str),
        Some("default"),
        "Status: {st}"
    );
    assert!(
        st.get("prefix").is_none(),
        "Status shows a prefix that was not set: {st}"
    );
    assert_eq!(boolish(st.get("ro")), Some(false), "Status ro: {st}");
    assert!(!mounted(&st));
    assert_eq!(holders(&st), 0);
    assert_eq!(health(&st), "not mounted");
    assert!(d.list_names().contains(&vol));
    // Nothing is mounted until a container needs it.
    assert!(
        d.mounts().is_empty() && d.s3fs_pids().is_empty(),
        "Create mounted something"
    );

    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(d.path(&vol).unwrap(), mp, "Path of a mounted volume");
    let st = status(&d, &vol);
    assert!(mounted(&st), "{st}");
    assert_eq!(holders(&st), 1, "{st}");
    assert_eq!(health(&st), "ok", "{st}");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);

    assert!(
        d.get("no-such-volume-here").is_err(),
        "Get of an unknown volume succeeded"
    );
    d.remove(&vol).unwrap();
    assert!(
        !d.list_names().contains(&vol),
        "removed volume still listed"
    );
    assert!(d.get(&vol).is_err(), "Get of a removed volume succeeded");
    // Remove never deletes the bucket.
    assert!(
        s3.s3().bucket_exists(&b).unwrap(),
        "Remove deleted the bucket"
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn file_written_through_the_mount_appears_as_an_object() {
    let Some((s3, d)) = setup("file_written_through_the_mount_appears_as_an_object") else {
        return;
    };
    let b = new_bucket(s3, "write");
    let vol = unique_name("write-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let data = random_bytes(200_000);
    fs::write(mp.join("hello.bin"), &data).unwrap();
    fs::create_dir(mp.join("sub")).unwrap();
    fs::write(mp.join("sub/note.txt"), b"in a folder").unwrap();
    s3_poll(s3, &b, "hello.bin", &data, Duration::from_secs(10));
    s3_poll(
        s3,
        &b,
        "sub/note.txt",
        b"in a folder",
        Duration::from_secs(10),
    );
    assert_eq!(fs::read(mp.join("hello.bin")).unwrap(), data);
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    // The data stays in the bucket.
    s3_poll(s3, &b, "hello.bin", &data, Duration::from_secs(10));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn object_put_through_s3_appears_in_the_mount() {
    let Some((s3, d)) = setup("object_put_through_s3_appears_in_the_mount") else {
        return;
    };
    let b = new_bucket(s3, "read");
    s3.s3().put(&b, "before.txt", b"put before mount").unwrap();
    s3.s3().put(&b, "dir/deep.txt", b"deep").unwrap();
    let vol = unique_name("read-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(
        fs::read(mp.join("before.txt")).unwrap(),
        b"put before mount"
    );
    assert_eq!(fs::read(mp.join("dir/deep.txt")).unwrap(), b"deep");
    let mut names: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["before.txt", "dir"], "listing of the mount");
    s3.s3().put(&b, "after.txt", b"put after mount").unwrap();
    read_poll(&mp.join("after.txt"), b"put after mount");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

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

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn ro_volume_writes_fail_with_erofs() {
    let Some((s3, d)) = setup("ro_volume_writes_fail_with_erofs") else {
        return;
    };
    let b = new_bucket(s3, "ro");
    s3.s3().put(&b, "existing.txt", b"read me").unwrap();
    let vol = unique_name("ro-vol");
    create_ok(&d, &vol, &[("bucket", &b), ("ro", "true")]);
    assert_eq!(boolish(status(&d, &vol).get("ro")), Some(true));
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(fs::read(mp.join("existing.txt")).unwrap(), b"read me");

    let mut failures = Vec::new();
    let mut expect_erofs = |what: &str, r: io::Result<()>| match r {
        Err(e) if e.raw_os_error() == Some(EROFS) => {}
        other => failures.push(format!("{what}: expected EROFS, got {other:?}")),
    };
    expect_erofs("create a file", fs::write(mp.join("new.txt"), b"no"));
    expect_erofs(
        "open an existing file for writing",
        fs::OpenOptions::new()
            .append(true)
            .open(mp.join("existing.txt"))
            .and_then(|mut f| f.write_all(b"no")),
    );
    expect_erofs("mkdir", fs::create_dir(mp.join("newdir")));
    expect_erofs("unlink", fs::remove_file(mp.join("existing.txt")));
    expect_erofs(
        "rename",
        fs::rename(mp.join("existing.txt"), mp.join("moved.txt")),
    );
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    assert!(
        failures.is_empty(),
        "writes on a ro volume:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        s3.s3().list(&b, None).unwrap(),
        vec!["existing.txt".to_string()],
        "a ro volume changed the bucket"
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn prefix_shows_only_its_prefix_and_writes_land_under_it() {
    let Some((s3, d)) = setup("prefix_shows_only_its_prefix_and_writes_land_under_it") else {
        return;
    };
    let b = new_bucket(s3, "prefix");
    s3.s3().put(&b, "team/alpha/a.txt", b"alpha").unwrap();
    s3.s3().put(&b, "team/alpha/sub/s.txt", b"sub").unwrap();
    s3.s3().put(&b, "team/beta/b.txt", b"beta").unwrap();
    s3.s3().put(&b, "top.txt", b"top").unwrap();
    let vol = unique_name("prefix-vol");
    create_ok(&d, &vol, &[("bucket", &b), ("prefix", "team/alpha")]);
    let st = status(&d, &vol);
    assert!(
        st.get("prefix")
            .and_then(Value::as_str)
            .map(|p| p.trim_matches('/') == "team/alpha")
            .unwrap_or(false),
        "Status prefix: {st}"
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let mut names: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["a.txt", "sub"],
        "the mount of prefix team/alpha shows"
    );
    assert_eq!(fs::read(mp.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(mp.join("sub/s.txt")).unwrap(), b"sub");
    fs::write(mp.join("new.txt"), b"written").unwrap();
    s3_poll(
        s3,
        &b,
        "team/alpha/new.txt",
        b"written",
        Duration::from_secs(10),
    );
    assert_eq!(
        s3.s3().get(&b, "new.txt").unwrap(),
        None,
        "a write landed outside the prefix"
    );
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn uid_gid_umask_as_asked() {
    let Some((s3, d)) = setup("uid_gid_umask_as_asked") else {
        return;
    };
    let b = new_bucket(s3, "owner");
    s3.s3().put(&b, "from-s3.txt", b"s3").unwrap();
    let vol = unique_name("owner-vol");
    create_ok(
        &d,
        &vol,
        &[
            ("bucket", &b),
            ("uid", "1000"),
            ("gid", "1001"),
            ("umask", "027"),
        ],
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("from-root.txt"), b"root").unwrap();
    fs::create_dir(mp.join("dir")).unwrap();
    let mut bad = Vec::new();
    for p in [
        mp.clone(),
        mp.join("from-s3.txt"),
        mp.join("from-root.txt"),
        mp.join("dir"),
    ] {
        let m = fs::metadata(&p).unwrap();
        if m.uid() != 1000 || m.gid() != 1001 || m.mode() & 0o777 != 0o750 {
            bad.push(format!(
                "{}: uid {} gid {} mode {:o}",
                p.display(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ));
        }
    }
    // The container's user (uid 1000, as Backend.AI runs it) can write and read, through a
    // bind of the mount point as Docker gives it to a container (the mount root itself is
    // root-only).
    let view = d.dir.join("container-view");
    fs::create_dir(&view).unwrap();
    nix::mount::mount(
        Some(&mp),
        &view,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"echo from-1000 > "$1/by-1000.txt" && cat "$1/by-1000.txt" && ls "$1" >/dev/null"#)
        .arg("sh")
        .arg(&view)
        .uid(1000)
        .gid(1001)
        .output()
        .unwrap();
    nix::mount::umount2(&view, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let out_s = String::from_utf8_lossy(&out.stdout).into_owned();
    let err_s = String::from_utf8_lossy(&out.stderr).into_owned();
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    assert!(
        bad.is_empty(),
        "expected uid 1000, gid 1001, mode 750 (umask 027):\n{}",
        bad.join("\n")
    );
    assert!(
        out.status.success() && out_s.trim() == "from-1000",
        "uid 1000 could not write: {} {err_s}",
        out.status
    );
    s3_poll(
        s3,
        &b,
        "by-1000.txt",
        b"from-1000\n",
        Duration::from_secs(10),
    );
}

/// Checks that a refused Create left nothing behind.
fn assert_nothing_left(d: &Daemon, name: &str, problems: &mut Vec<String>, what: &str) {
    if d.list_names().iter().any(|n| n == name) {
        problems.push(format!("{what}: {name:?} is listed after a refused Create"));
    }
    if let Ok(v) = d.get(name) {
        problems.push(format!(
            "{what}: Get {name:?} succeeded after a refused Create: {v}"
        ));
    }
    if !d.mounts().is_empty() || !d.s3fs_pids().is_empty() {
        problems.push(format!(
            "{what}: something is mounted after a refused Create: {:?}",
            d.mounts()
        ));
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn refused_options_name_the_offending_key_or_value() {
    let Some((s3, d)) = setup("refused_options_name_the_offending_key_or_value") else {
        return;
    };
    let b = new_bucket(s3, "refuse");
    // (options, words the Err must contain)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (vec![("colour", "blue")], vec!["colour"]),
        (vec![("ro", "maybe")], vec!["ro", "maybe"]),
        (
            vec![("create-bucket", "perhaps")],
            vec!["create-bucket", "perhaps"],
        ),
        (vec![("uid", "abc")], vec!["uid", "abc"]),
        (vec![("gid", "-1")], vec!["gid", "-1"]),
        (vec![("umask", "999")], vec!["umask", "999"]),
        (vec![("prefix", "a,allow_other")], vec!["prefix"]),
        (vec![("prefix", "a=b")], vec!["prefix"]),
        (vec![("prefix", "a b")], vec!["prefix"]),
        (vec![("prefix", "../escape")], vec!["prefix"]),
        (vec![("bucket", "x,allow_other")], vec!["bucket"]),
        (vec![("access-key", "AKIAEXAMPLE")], vec!["access-key"]),
        (vec![("secret-key", "wJalrXUtnFEMI")], vec!["secret-key"]),
        (vec![("password", "hunter2")], vec!["password"]),
        (vec![("backend", "nosuchbackend")], vec!["nosuchbackend"]),
        (vec![("bucket", "Bad_Bucket")], vec!["Bad_Bucket"]),
        (vec![("bucket", "ab")], vec!["bucket"]),
    ];
    let mut problems = Vec::new();
    for (i, (opts, words)) in cases.iter().enumerate() {
        let name = format!("{}-{i}", unique_name("ref"));
        let mut all = vec![("bucket", b.as_str())];
        all.retain(|(k, _)| !opts.iter().any(|(k2, _)| k2 == k));
        all.extend(opts.iter().cloned());
        match d.create(&name, &all) {
            Ok(()) => problems.push(format!("{opts:?}: Create succeeded")),
            Err(e) => {
                for w in words {
                    if !e.contains(w) {
                        problems.push(format!("{opts:?}: Err does not name {w:?}: {e}"));
                    }
                }
            }
        }
        assert_nothing_left(&d, &name, &mut problems, &format!("{opts:?}"));
        if d.mountpoint_of(&name).exists() {
            problems.push(format!(
                "{opts:?}: a refused Create left {}",
                d.mountpoint_of(&name).display()
            ));
        }
    }
    assert!(problems.is_empty(), "refusals:\n{}", problems.join("\n"));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn refused_volume_names() {
    let Some((s3, d)) = setup("refused_volume_names") else {
        return;
    };
    let b = new_bucket(s3, "names");
    let long = "a".repeat(300);
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("a/b", Some("a/b")),
        ("..", Some("..")),
        (".", None),
        ("", None),
        (long.as_str(), None),
        ("vf:ro", Some("vf:ro")),
        ("a,b", Some("a,b")),
        ("has space", Some("has space")),
    ];
    let mut problems = Vec::new();
    for (name, word) in &cases {
        let shown = if name.len() > 20 {
            format!("{}...({} chars)", &name[..10], name.len())
        } else {
            name.to_string()
        };
        match d.create(name, &[("bucket", &b)]) {
            Ok(()) => problems.push(format!("volume name {shown:?}: Create succeeded")),
            Err(e) => {
                if let Some(w) = word {
                    if !e.contains(w) {
                        problems.push(format!("volume name {shown:?}: Err does not name it: {e}"));
                    }
                } else if !e.to_lowercase().contains("name") {
                    problems.push(format!(
                        "volume name {shown:?}: Err does not say the name is wrong: {e}"
                    ));
                }
            }
        }
        assert_nothing_left(&d, name, &mut problems, &format!("volume name {shown:?}"));
    }
    // Nothing appeared in the mount root or outside it.
    let entries: Vec<_> = fs::read_dir(&d.mount_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if !entries.is_empty() {
        problems.push(format!(
            "refused names left entries in the mount root: {entries:?}"
        ));
    }
    if d.dir.join("b").exists() {
        problems.push("a refused name created a folder outside the mount root".into());
    }
    assert!(problems.is_empty(), "refusals:\n{}", problems.join("\n"));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn missing_bucket_is_refused_unless_create_bucket() {
    let Some((s3, d)) = setup("missing_bucket_is_refused_unless_create_bucket") else {
        return;
    };
    let b = unique_name("missing");
    let vol = unique_name("missing-vol");
    let e = d
        .create(&vol, &[("bucket", &b)])
        .expect_err("Create of a volume on a missing bucket succeeded");
    assert!(
        e.contains(&b),
        "Err does not name the missing bucket {b}: {e}"
    );
    let mut problems = Vec::new();
    assert_nothing_left(&d, &vol, &mut problems, "missing bucket");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        !s3.s3().bucket_exists(&b).unwrap(),
        "Create without create-bucket created the bucket"
    );

    // The default bucket is the volume's name.
    let e = d
        .create(&b, &[])
        .expect_err("Create with the volume name as a missing bucket succeeded");
    assert!(
        e.contains(&b),
        "Err does not name the missing bucket {b}: {e}"
    );

    create_ok(&d, &vol, &[("bucket", &b), ("create-bucket", "true")]);
    assert!(
        s3.s3().bucket_exists(&b).unwrap(),
        "create-bucket=true did not create the bucket"
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("f"), b"f").unwrap();
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    s3_poll(s3, &b, "f", b"f", Duration::from_secs(10));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn create_again_same_options_ok_different_options_refused() {
    let Some((s3, d)) = setup("create_again_same_options_ok_different_options_refused") else {
        return;
    };
    let b = new_bucket(s3, "again");
    let b2 = new_bucket(s3, "again2");
    let vol = unique_name("again-vol");
    create_ok(&d, &vol, &[("bucket", &b), ("uid", "1000")]);
    create_ok(&d, &vol, &[("bucket", &b), ("uid", "1000")]);
    let e = d
        .create(&vol, &[("bucket", &b), ("uid", "1000"), ("ro", "true")])
        .expect_err("Create again with ro=true added succeeded");
    assert!(
        e.contains("ro"),
        "Err does not name the differing option ro: {e}"
    );
    let e = d
        .create(&vol, &[("bucket", &b2), ("uid", "1000")])
        .expect_err("Create again with another bucket succeeded");
    assert!(
        e.contains("bucket"),
        "Err does not name the differing option bucket: {e}"
    );
    let st = status(&d, &vol);
    assert_eq!(
        st.get("bucket").and_then(Value::as_str),
        Some(b.as_str()),
        "the refused Create changed the volume: {st}"
    );
    assert_eq!(
        boolish(st.get("ro")),
        Some(false),
        "the refused Create changed the volume: {st}"
    );
    assert_eq!(d.list_names().iter().filter(|n| **n == vol).count(), 1);
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn remove_while_held_is_refused() {
    let Some((s3, d)) = setup("remove_while_held_is_refused") else {
        return;
    };
    let b = new_bucket(s3, "held");
    let vol = unique_name("held-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("keep.txt"), b"keep").unwrap();
    let e = d
        .remove(&vol)
        .expect_err("Remove of a held volume succeeded");
    assert!(
        e.to_lowercase().contains("holder"),
        "Err does not mention holders: {e}"
    );
    assert!(
        d.list_names().contains(&vol),
        "refused Remove dropped the volume"
    );
    assert!(
        is_mountpoint(&mp) && statvfs_ok(&mp),
        "refused Remove broke the mount"
    );
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    d.remove(&vol).unwrap();
    assert!(!d.list_names().contains(&vol));
    // Remove never deletes data.
    s3_poll(s3, &b, "keep.txt", b"keep", Duration::from_secs(10));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn unmount_of_an_unknown_id_succeeds() {
    let Some((s3, d)) = setup("unmount_of_an_unknown_id_succeeds") else {
        return;
    };
    let b = new_bucket(s3, "unknownid");
    let vol = unique_name("unknownid-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    d.unmount(&vol, &new_id())
        .expect("Unmount of an unknown ID on an unmounted volume failed");
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    d.unmount(&vol, &new_id())
        .expect("Unmount of an unknown ID on a mounted volume failed");
    assert!(
        is_mountpoint(&mp),
        "Unmount of an unknown ID unmounted the volume"
    );
    let st = status(&d, &vol);
    assert!(mounted(&st) && holders(&st) == 1, "{st}");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

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

/// Retries Create for up to 15 s (the daemon rereads its backends file on its own schedule);
/// panics with `what`, the last Err and the log when it never succeeds.
fn create_within_15s(d: &Daemon, vol: &str, opts: &[(&str, &str)], what: &str) {
    let mut last = String::new();
    let ok = poll(Duration::from_secs(15), || match d.create(vol, opts) {
        Ok(()) => Some(()),
        Err(e) => {
            last = e;
            None
        }
    });
    assert!(
        ok.is_some(),
        "{what} within 15 s: {last}\n{}",
        d.logs_tail(30)
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn backends_file_is_reread_when_it_changes() {
    let Some((s3, d)) = setup("backends_file_is_reread_when_it_changes") else {
        return;
    };
    let b = new_bucket(s3, "reread");
    let vol = unique_name("reread-vol");
    let e = d
        .create(&vol, &[("bucket", &b), ("backend", "second")])
        .expect_err("Create on an unknown backend succeeded");
    assert!(e.contains("second"), "Err does not name the backend: {e}");
    d.write_backends(&[s3.backend("default"), s3.backend("second")]);
    create_within_15s(
        &d,
        &vol,
        &[("bucket", &b), ("backend", "second")],
        "the new backend was not picked up",
    );
    assert_eq!(
        status(&d, &vol).get("backend").and_then(Value::as_str),
        Some("second")
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("x"), b"x").unwrap();
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

/// Every file under `dir` (not following mounts) whose content contains `needle`.
fn files_containing(dir: &Path, needle: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if !is_mountpoint(&p) {
                files_containing(&p, needle, out);
            }
        } else if ft.is_file() {
            if let Ok(b) = fs::read(&p) {
                if String::from_utf8_lossy(&b).contains(needle) {
                    out.push(p);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn no_secret_in_logs_argv_status_or_state() {
    let Some((s3, d)) = setup("no_secret_in_logs_argv_status_or_state") else {
        return;
    };
    let secret = s3.secret_key.clone();
    let b = unique_name("secret");
    let vol = unique_name("secret-vol");
    let mut seen = Vec::new();
    create_ok(&d, &vol, &[("bucket", &b), ("create-bucket", "true")]);
    let _ = d.create(
        &unique_name("secret-bad"),
        &[("bucket", &b), ("secret-key", "not-the-real-one")],
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("f"), b"data").unwrap();
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"data");
    seen.push(d.get(&vol).unwrap().to_string());
    seen.push(Value::Array(d.list().unwrap()).to_string());
    // Every process's argv while the volume is mounted.
    let mut in_argv = Vec::new();
    for pid in all_pids() {
        if cmdline(pid).iter().any(|a| a.contains(&secret)) {
            in_argv.push(format!("{pid}: {}", cmdline(pid).join(" ")));
        }
    }
    // A backends-file reload is logged too.
    d.write_backends(&[s3.backend("default"), s3.backend("other")]);
    let _ = poll(Duration::from_secs(10), || {
        d.create(
            &unique_name("secret-o"),
            &[("bucket", &b), ("backend", "other")],
        )
        .ok()
    });
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    let _ = d.mount(&unique_name("not-a-volume"), &new_id());
    d.remove(&vol).unwrap();

    let logs = d.logs();
    assert!(
        logs.len() > 200,
        "the daemon logged almost nothing at trace level: {logs:?}"
    );
    assert!(in_argv.is_empty(), "the secret key is in argv: {in_argv:?}");
    assert!(
        !logs.contains(&secret),
        "the secret key is in the daemon's log ({})",
        d.log.display()
    );
    for s in &seen {
        assert!(!s.contains(&secret), "the secret key is in Get/List: {s}");
    }
    let mut files = Vec::new();
    files_containing(&d.state_dir, &secret, &mut files);
    files_containing(&d.mount_root, &secret, &mut files);
    assert!(files.is_empty(), "the secret key is stored in {files:?}");
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_backends_file_open_to_others_is_refused() {
    let Some((s3, mut d)) = setup("a_backends_file_open_to_others_is_refused") else {
        return;
    };
    let b = new_bucket(s3, "mode");
    let vol = unique_name("mode-vol");
    d.kill9();
    // The file now names a second backend, but anyone on the host could read its secrets.
    d.write_backends_with_mode(&[s3.backend("default"), s3.backend("second")], 0o644);
    match d.try_restart() {
        // Refusing to start is one way of refusing the file: then say why.
        Err(e) => {
            assert!(
                e.contains(&*d.config.to_string_lossy()) || e.contains("600"),
                "the daemon exited without naming the open backends file: {e}"
            );
            d.write_backends(&[s3.backend("default"), s3.backend("second")]);
            d.restart();
        }
        // Or it runs and refuses the file's backends, saying why.
        Ok(()) => {
            let e = d
                .create(&vol, &[("bucket", &b), ("backend", "second")])
                .expect_err("a backend from a backends file of mode 0644 was used");
            assert!(
                ["600", "chmod", "mode", "permission"]
                    .iter()
                    .any(|w| e.contains(w)),
                "the Err does not say the backends file is too open: {e}"
            );
            assert!(!d.list_names().contains(&vol));
            d.write_backends(&[s3.backend("default"), s3.backend("second")]);
        }
    }
    create_within_15s(
        &d,
        &vol,
        &[("bucket", &b), ("backend", "second")],
        "the backends file, now 0600, was not taken",
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_open_files_limit_is_raised_to_the_hard_one() {
    // A pidfd and a child watcher per s3fs: hundreds of buckets pass the soft limit of 1024
    // that containers get by default, so the daemon raises it as Go programs do.
    let test = "the_open_files_limit_is_raised_to_the_hard_one";
    if !prereqs(test) {
        return;
    }
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let soft = 64.min(hard);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let socket = dir.join("s.sock");
    let log = fs::File::create(dir.join("log")).unwrap();
    let mut cmd = serve_command(
        &socket,
        &dir.join("state"),
        &dir.join("mnt"),
        &dir.join("b.toml"),
    );
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: setrlimit and prctl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(io::Error::from)
        });
    }
    let mut child = cmd.spawn().expect("spawn bai-s3 serve");
    let listening = poll(Duration::from_secs(20), || {
        plugin_call(&socket, "Plugin.Activate", "").ok()
    });
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let logs = fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(listening.is_some(), "not listening:\n{logs}");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files limit in:\n{limits}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums, vec![hard, hard], "{line}\n{logs}");
    if soft < hard {
        assert!(logs.contains("open files limit raised"), "{logs}");
    }
}
