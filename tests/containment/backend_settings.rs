//! What a backend setting says: an endpoint with user info is refused without quoting it, and
//! backends that differ only across field boundaries get their own s3fs.

use std::fs;

use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn an_endpoint_with_user_info_is_refused_without_quoting_it() {
    if !prereqs("an_endpoint_with_user_info_is_refused") {
        return;
    }
    let s3 = shared_s3();
    let mut bad = s3.backend("default");
    let secret = format!("pw{}", random_hex(8));
    bad.endpoint = bad
        .endpoint
        .replace("http://", &format!("http://admin:{secret}@"));
    let d = Daemon::start_with(&[bad], &[]);
    let b = new_bucket(s3, "userinfo");
    let e = d
        .create(&unique_name("ui"), &[("bucket", &b)])
        .expect_err("Create succeeded with an endpoint carrying a password");
    assert!(e.contains("user name or password"), "{e}");
    assert!(!e.contains(&secret), "{e}");
    assert!(
        !d.logs().contains(&secret),
        "the log quotes the endpoint's password"
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn backends_that_differ_only_across_field_boundaries_get_their_own_s3fs() {
    let Some((s3, d)) = setup("backends_across_field_boundaries") else {
        return;
    };
    // Backend `a-b` with bucket `c…` and backend `a` with bucket `b-c…`.
    let tail = unique_name("x");
    let (b1, b2) = (format!("c{tail}"), format!("b-c{tail}"));
    s3.s3().create_bucket(&b1).unwrap();
    s3.s3().create_bucket(&b2).unwrap();
    s3.s3().put(&b1, "which", b"one").unwrap();
    s3.s3().put(&b2, "which", b"two").unwrap();
    d.write_backends(&[s3.backend("a-b"), s3.backend("a")]);
    let (v1, v2) = (unique_name("ab"), unique_name("a"));
    create_ok(&d, &v1, &[("backend", "a-b"), ("bucket", &b1)]);
    create_ok(&d, &v2, &[("backend", "a"), ("bucket", &b2)]);
    let (i1, i2) = (new_id(), new_id());
    let m1 = mount_ok(&d, &v1, &i1);
    let m2 = mount_ok(&d, &v2, &i2);
    assert_eq!(fs::read(m1.join("which")).unwrap(), b"one");
    assert_eq!(fs::read(m2.join("which")).unwrap(), b"two");
    assert_eq!(d.s3fs_pids().len(), 2);
    unmount_ok(&d, &v1, &i1);
    unmount_ok(&d, &v2, &i2);
}
