//! A restart while the backends file is broken (too open, a syntax error, the volume's backend
//! gone): live mounts are adopted as they are and their writers write on.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;
use crate::{wait_adopted, Writer};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_restart_with_the_backends_file_broken_keeps_live_mounts_and_their_writers() {
    let Some((s3, mut d)) = setup("a_restart_with_the_backends_file_broken_keeps_live_mounts")
    else {
        return;
    };
    let bucket = new_bucket(s3, "brk");
    let vol = unique_name("brk");
    create_ok(&d, &vol, &[("bucket", &bucket), ("prefix", "work")]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1);
    let writer = Writer::start(&mp.join("job.log"));
    writer.wait_more(3, "before any restart");

    type Break = fn(&Daemon);
    let breakages: [(&str, Break); 3] = [
        ("a backends file others can read (chmod 644)", |d| {
            fs::set_permissions(&d.config, fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("a syntax error in the backends file", |d| {
            write_private_file(&d.config, "[backends.default\nendpoint = \n")
        }),
        ("the volume's backend removed from the file", |d| {
            write_private_file(&d.config, "")
        }),
    ];
    for (what, break_it) in breakages {
        d.kill9();
        break_it(&d);
        d.restart();
        let st = wait_adopted(&d, &vol, 1);
        assert_eq!(health(&st), "ok", "{what}: {st}");
        assert!(
            st.get("problem")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains("default")),
            "{what}: Get says why a new mount would fail: {st}"
        );
        assert_eq!(d.s3fs_pids(), pids, "{what}: the same s3fs serves on");
        assert!(is_mountpoint(&mp), "{what}: the bind is still there");
        writer.wait_more(3, what);
        // A second container on the live mount needs no backend; its Unmount is answered.
        let id2 = new_id();
        assert_eq!(mount_ok(&d, &vol, &id2), mp, "{what}");
        unmount_ok(&d, &vol, &id2);
        assert!(
            is_mountpoint(&mp),
            "{what}: the first holder keeps the mount"
        );
        d.write_backends(&[s3.backend("default")]);
    }
    writer.finish_into(&d, (&vol, &id), s3, (&bucket, "work/job.log"));
    assert!(!is_mountpoint(&mp));
    d.remove(&vol).unwrap();
}
