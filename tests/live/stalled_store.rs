//! A Mount that times out on a stalled store (a proxy that stops answering): nothing left, and
//! nothing poisoned for the Mounts after it.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::stall::StallProxy;
use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_mount_timed_out_on_a_stalled_store_leaves_nothing_and_poisons_nothing() {
    if !prereqs("a_mount_timed_out_on_a_stalled_store_leaves_nothing") {
        return;
    }
    let s3 = shared_s3();
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = StallProxy::start(&upstream, "stallhere");
    let mut backend = s3.backend("default");
    backend.endpoint = proxy.endpoint.clone();
    let d = Daemon::start_with(&[backend], &["--mount-timeout", "5"]);
    let bucket = new_bucket(s3, "stl");
    let (vp, vw) = (unique_name("stlp"), unique_name("stlw"));
    create_ok(
        &d,
        &vp,
        &[("bucket", &bucket), ("prefix", "stallhere/deep")],
    );
    create_ok(&d, &vw, &[("bucket", &bucket)]);

    proxy.stall(true);
    let t = Instant::now();
    let err = d
        .mount(&vp, &new_id())
        .expect_err("the Mount on a stalled store fails");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(9), "the Mount took {took:?}");
    assert!(err.contains("within 5 s"), "{err}");
    // Nothing is left: no s3fs, no mount, no folder or file in any mount folder.
    poll(Duration::from_secs(10), || {
        d.s3fs_pids().is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("an s3fs is left: {:?}\n{}", d.s3fs_pids(), d.logs_tail(40)));
    assert!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
    let shared = d.mount_root.join(".s3fs");
    if let Ok(rd) = fs::read_dir(&shared) {
        for e in rd.flatten() {
            let inside: Vec<_> = fs::read_dir(e.path())
                .map(|r| r.flatten().map(|x| x.path()).collect())
                .unwrap_or_default();
            assert!(
                inside.is_empty(),
                "left in {}: {inside:?}",
                e.path().display()
            );
        }
    }
    assert!(
        !d.mountpoint_of(&vp).exists(),
        "the mount point folder is left"
    );

    // The bucket is not poisoned: once the store answers, its volumes mount.
    proxy.stall(false);
    let id = new_id();
    let mp = mount_ok(&d, &vw, &id);
    fs::write(mp.join("after.txt"), b"ok").unwrap();
    unmount_ok(&d, &vw, &id);
    assert_eq!(
        s3.s3().get(&bucket, "after.txt").unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    for v in [&vp, &vw] {
        d.remove(v).unwrap();
    }
}
