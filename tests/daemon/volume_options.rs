//! What a volume's options do to its mount: `ro`, `prefix`, `uid`/`gid`/`umask`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::{boolish, wait_unmounted};

const EROFS: i32 = 30;

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
