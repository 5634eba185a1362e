//! s3fs killed under a mounted volume: Get shows it stale, and the periodic health check mounts
//! it again without any Mount call.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;
use crate::{lines_matching, s3fs_of_bucket};

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn killed_s3fs_is_shown_stale_and_remounted_by_the_health_check() {
    let Some((s3, d)) = setup_with(
        "killed_s3fs_is_shown_stale_and_remounted_by_the_health_check",
        &["--health-interval", "1"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "heal");
    let vol = unique_name("heal-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("before.txt"), b"before").unwrap();
    s3_poll(s3, &b, "before.txt", b"before", Duration::from_secs(15));

    // The health check may repair the mount within a second; Get must show "stale" in
    // between. Try a few kills, so that a kill landing just before a check does not fail the
    // test, but a daemon that never shows "stale" does.
    let mut saw_stale = false;
    let mut killed = Vec::new();
    for _attempt in 0..3 {
        let pids = s3fs_of_bucket(&d, &b);
        assert_eq!(pids.len(), 1, "expected one s3fs for {b}: {pids:?}");
        let pid = pids[0];
        sigkill(pid).unwrap();
        killed.push(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let st = status(&d, &vol);
            if health(&st) == "stale" {
                saw_stale = true;
                break;
            }
            if health(&st) == "ok" && s3fs_of_bucket(&d, &b).iter().any(|p| !killed.contains(p)) {
                break; // repaired before we looked
            }
        }
        // Repaired without any Mount call: health ok, a new s3fs, the same holders.
        let mut last = Value::Null;
        let healed = poll(Duration::from_secs(20), || {
            last = status(&d, &vol);
            let pids = s3fs_of_bucket(&d, &b);
            (health(&last) == "ok"
                && mounted(&last)
                && pids.len() == 1
                && !killed.contains(&pids[0])
                && statvfs_ok(&mp))
            .then_some(())
        });
        assert!(
            healed.is_some(),
            "the health check did not mount {vol} again within 20 s after s3fs {pid} was killed; last Status {last}; s3fs {:?}\n{}",
            s3fs_of_bucket(&d, &b),
            d.logs_tail(60)
        );
        assert_eq!(holders(&last), 1, "holders changed by the repair: {last}");
        if saw_stale {
            break;
        }
    }
    assert!(
        saw_stale,
        "Get never showed health \"stale\" between the kill of s3fs and its repair (3 tries)"
    );

    // The mount point answers: readdir works (no ENOTCONN), the old file reads, a new one
    // writes, and no "file exists" anywhere.
    let entries: Vec<String> = fs::read_dir(&mp)
        .unwrap_or_else(|e| panic!("readdir {} after the repair: {e}", mp.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.contains(&"before.txt".to_string()), "{entries:?}");
    assert_eq!(fs::read(mp.join("before.txt")).unwrap(), b"before");
    fs::write(mp.join("after.txt"), b"after").unwrap();
    fs::create_dir(mp.join("newdir")).unwrap();
    s3_poll(s3, &b, "after.txt", b"after", Duration::from_secs(15));
    assert_eq!(
        mounts_under(&mp).len(),
        1,
        "stacked mounts at the mount point after the repair: {:?}",
        mounts_under(&mp)
    );
    let exists = lines_matching(&d, "File exists");
    assert!(exists.is_empty(), "\"File exists\" in the log: {exists:#?}");
    let repairs = lines_matching(&d, "health check: mount is stale");
    assert!(
        !repairs.is_empty(),
        "the log does not say the health check repaired the mount"
    );
    unmount_ok(&d, &vol, &id);
    wait_all_unmounted(&d);
    assert!(!mp.exists(), "the mount point folder is left after Unmount");
}
