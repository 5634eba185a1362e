//! The backends file changed or broken while volumes are mounted: the old mount stays on its
//! server, new mounts follow the file, a broken file leaves the last good configuration in force.

use std::fs;
use std::time::Duration;

use crate::support::*;
use crate::{lines_matching, s3fs_of_bucket};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn backends_file_changed_while_mounted_old_mount_stays_new_mounts_follow() {
    if !prereqs("backends_file_changed_while_mounted_old_mount_stays_new_mounts_follow") {
        return;
    }
    let old = shared_s3();
    let new = S3Server::start_private();
    let d = Daemon::start(old);
    // The same bucket name on both servers: where the data lands tells which server is used.
    let b = new_bucket(old, "switch");
    new.s3().create_bucket(&b).unwrap();
    let v1 = unique_name("switch-v1");
    create_ok(&d, &v1, &[("bucket", &b)]);
    let a = new_id();
    let mp1 = mount_ok(&d, &v1, &a);
    fs::write(mp1.join("v1-before.txt"), b"old").unwrap();
    s3_poll(old, &b, "v1-before.txt", b"old", Duration::from_secs(15));
    let pid1 = s3fs_of_bucket(&d, &b);
    assert_eq!(pid1.len(), 1);

    d.write_backends(&[new.backend("default")]);
    let v2 = unique_name("switch-v2");
    // Create checks the bucket on the backend as configured now (it exists on both).
    create_ok(&d, &v2, &[("bucket", &b)]);
    let bb = new_id();
    let mp2 = mount_ok(&d, &v2, &bb);
    fs::write(mp2.join("v2.txt"), b"new").unwrap();
    s3_poll(&new, &b, "v2.txt", b"new", Duration::from_secs(15));
    assert_eq!(
        old.s3().get(&b, "v2.txt").unwrap(),
        None,
        "the new volume's data reached the old server"
    );
    // The existing mount is untouched: same s3fs, still the old server.
    fs::write(mp1.join("v1-after.txt"), b"old-after").unwrap();
    s3_poll(
        old,
        &b,
        "v1-after.txt",
        b"old-after",
        Duration::from_secs(15),
    );
    assert_eq!(new.s3().get(&b, "v1-after.txt").unwrap(), None);
    assert!(fs::read_dir(&mp1)
        .unwrap()
        .flatten()
        .all(|e| e.file_name() != "v2.txt"));
    let pids = s3fs_of_bucket(&d, &b);
    assert!(
        pids.contains(&pid1[0]) && pids.len() == 2,
        "expected the old s3fs {pid1:?} and one new: {pids:?}"
    );

    // A broken backends file: the last good configuration (the new server) stays in force.
    write_private_file(
        &d.config,
        "[backends.default\nendpoint = \"http://nowhere\"\n",
    );
    let b3 = new_bucket(&new, "switch3");
    let v3 = unique_name("switch-v3");
    create_ok(&d, &v3, &[("bucket", &b3)]);
    let c = new_id();
    let mp3 = mount_ok(&d, &v3, &c);
    fs::write(mp3.join("v3.txt"), b"v3").unwrap();
    s3_poll(&new, &b3, "v3.txt", b"v3", Duration::from_secs(15));
    let said = lines_matching(&d, "keeping the last good configuration");
    assert!(
        said.iter()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("toml")
                || l.contains("expected")),
        "the log does not say why the backends file is not used: {said:#?}\n{}",
        d.logs_tail(30)
    );
    // Mounts made under the earlier configurations still work.
    assert_eq!(fs::read(mp1.join("v1-before.txt")).unwrap(), b"old");
    assert_eq!(fs::read(mp2.join("v2.txt")).unwrap(), b"new");

    for (v, id) in [(&v1, &a), (&v2, &bb), (&v3, &c)] {
        unmount_ok(&d, v, id);
    }
    wait_all_unmounted(&d);
    drop(d);
    drop(new);
}
