//! What a bucket holds never leads out of it: symbolic links planted through a mount, or put as
//! objects with s3fs's symlink metadata, are refused as a prefix and never followed to the host.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::support::*;
use crate::table;

/// Mount `vol` (prefix `prefix` of `bucket`) and expect a refusal that names `component`;
/// nothing may be mounted or made on the host.
fn expect_refused(d: &Daemon, bucket: &str, prefix: &str, component: &str, host: &[&Path]) {
    let vol = unique_name("evil");
    create_ok(d, &vol, &[("bucket", bucket), ("prefix", prefix)]);
    let before = table(d);
    let e = d
        .mount(&vol, &new_id())
        .expect_err(&format!("Mount of prefix {prefix:?} succeeded"));
    assert!(
        e.contains(&format!("{component:?}"))
            && e.contains("a prefix must be a folder in the bucket"),
        "prefix {prefix:?}: the Err does not name {component:?} and the rule: {e}"
    );
    assert_eq!(
        table(d),
        before,
        "prefix {prefix:?}: the mount table changed"
    );
    assert!(
        !d.mountpoint_of(&vol).exists(),
        "prefix {prefix:?}: mount point left"
    );
    for p in host {
        assert!(
            !p.exists(),
            "prefix {prefix:?}: {} was made on the host",
            p.display()
        );
    }
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn links_planted_through_a_mount_never_lead_out_of_the_bucket() {
    let Some((s3, d)) = setup("links_planted_through_a_mount") else {
        return;
    };
    let b = new_bucket(s3, "links");
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("marker"), b"host").unwrap();
    let w = unique_name("whole");
    create_ok(&d, &w, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &w, &id);
    symlink("/", mp.join("evil")).unwrap();
    symlink(host.path(), mp.join("lnk")).unwrap();
    fs::create_dir(mp.join("real")).unwrap();
    symlink("/etc", mp.join("real/inner")).unwrap();
    let tag = random_hex(4);
    let on_root = PathBuf::from(format!("/bai-s3-contain-{tag}"));
    let in_host = host.path().join(format!("sub-{tag}"));
    let in_etc = PathBuf::from(format!("/etc/bai-s3-contain-{tag}"));

    expect_refused(&d, &b, "evil", "evil", &[]);
    let p = format!("evil/bai-s3-contain-{tag}");
    expect_refused(&d, &b, &p, "evil", &[&on_root]);
    expect_refused(&d, &b, "lnk", "lnk", &[]);
    expect_refused(&d, &b, &format!("lnk/sub-{tag}"), "lnk", &[&in_host]);
    expect_refused(&d, &b, "real/inner", "real/inner", &[]);
    let p = format!("real/inner/bai-s3-contain-{tag}");
    expect_refused(&d, &b, &p, "real/inner", &[&in_etc]);
    let names: Vec<_> = fs::read_dir(host.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "the host folder changed: {names:?}");

    // A real folder still works, and its missing tail is made in the bucket.
    let ok = unique_name("fine");
    create_ok(&d, &ok, &[("bucket", &b), ("prefix", "real/made")]);
    let id2 = new_id();
    mount_ok(&d, &ok, &id2);
    assert!(mp.join("real/made").is_dir());
    unmount_ok(&d, &ok, &id2);
    unmount_ok(&d, &w, &id);
}

/// s3fs 1.90 shows an object whose `x-amz-meta-mode` has the S_IFLNK bits as a symbolic link
/// to the object's body.
const S_IFLNK_0777: &str = "41471"; // 0o120777

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn links_written_as_objects_through_s3_never_lead_out_of_the_bucket() {
    let Some((s3, d)) = setup("links_written_as_objects") else {
        return;
    };
    let b = new_bucket(s3, "objlinks");
    let host = tempfile::tempdir().unwrap();
    let meta = [("mode", S_IFLNK_0777)];
    s3.s3().put_with_metadata(&b, "evil", b"/", &meta).unwrap();
    let target = host.path().to_str().unwrap().as_bytes().to_vec();
    s3.s3()
        .put_with_metadata(&b, "lnk", &target, &meta)
        .unwrap();
    s3.s3().put(&b, "real/", b"").unwrap();
    s3.s3()
        .put_with_metadata(&b, "real/inner", b"/etc", &meta)
        .unwrap();
    let tag = random_hex(4);
    let on_root = PathBuf::from(format!("/bai-s3-contain-{tag}"));
    let in_host = host.path().join(format!("sub-{tag}"));

    expect_refused(&d, &b, "evil", "evil", &[]);
    expect_refused(
        &d,
        &b,
        &format!("evil/bai-s3-contain-{tag}"),
        "evil",
        &[&on_root],
    );
    expect_refused(&d, &b, &format!("lnk/sub-{tag}"), "lnk", &[&in_host]);
    expect_refused(&d, &b, "real/inner", "real/inner", &[]);
    assert_eq!(fs::read_dir(host.path()).unwrap().count(), 0);
    // Nothing was written into the bucket either.
    let keys = s3.s3().list(&b, None).unwrap();
    assert_eq!(keys, vec!["evil", "lnk", "real/", "real/inner"], "{keys:?}");
}
