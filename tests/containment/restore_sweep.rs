//! The restore sweep at start takes down only what is provably bai-s3's (a bind of its own s3fs
//! that no volume holds): other file systems in its folders and someone else's s3fs of the same
//! bucket stay.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_restore_sweep_touches_only_what_is_provably_bai_s3s() {
    let Some((s3, mut d)) = setup("the_restore_sweep_touches_only_what_is_provably_bai_s3s") else {
        return;
    };
    let b = new_bucket(s3, "sweep");
    let keep = unique_name("keep");
    create_ok(&d, &keep, &[("bucket", &b), ("prefix", "held")]);
    let id = new_id();
    let mp = mount_ok(&d, &keep, &id);
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1);

    // Someone else's s3fs of the same bucket, outside the mount root and the state folder (in
    // the test's own folder, which the parallel tests' mount-table checks leave out), with its
    // own password file.
    let (bare_at, pw) = (d.dir.join("bare"), d.dir.join("bare-passwd"));
    fs::create_dir(&bare_at).unwrap();
    let be = s3.backend("default");
    write_private_file(&pw, &format!("{}:{}\n", be.access_key, be.secret_key));
    run_ok(
        Command::new("s3fs")
            .arg(&b)
            .arg(&bare_at)
            .args(["-o", &format!("url={}", be.endpoint)])
            .args(["-o", "use_path_request_style"])
            .arg("-o")
            .arg(format!("passwd_file={}", pw.display())),
    );
    let _bare = Mounted(bare_at.clone());
    wait_for("the bare s3fs mount", Duration::from_secs(20), || {
        is_mountpoint(&bare_at).then_some(())
    });
    let bare_pids = s3fs_pids_mentioning(&bare_at);
    assert_eq!(bare_pids.len(), 1, "{bare_pids:?}");

    d.kill9();
    let tag = random_hex(4);
    // Not bai-s3's: other file systems in its folders, and the bare s3fs elsewhere.
    let foreign = [
        d.mount_root.join(format!("foreign-{tag}")),
        d.mount_root.join(".s3fs").join(format!("foreign-{tag}")),
    ];
    let _foreign: Vec<Mounted> = foreign
        .iter()
        .map(|p| mount_guarded(p, &["-t", "tmpfs", "tmpfs"]))
        .collect();
    // bai-s3's: a bind of its s3fs in the mount root that no volume holds (a dead run's).
    let stray = d.mount_root.join(format!("stray-{tag}"));
    let _stray = mount_guarded(&stray, &[Path::new("--bind"), &mp]);
    assert!(is_mountpoint(&stray));

    d.restart();
    let st = poll(Duration::from_secs(20), || {
        let st = d.status(&keep).ok()?;
        (mounted(&st) && holders(&st) == 1 && !is_mountpoint(&stray)).then_some(st)
    });
    assert!(
        st.is_some(),
        "after the restart: {:?}, stray bind mounted: {}\n{}",
        d.status(&keep),
        is_mountpoint(&stray),
        d.logs_tail(40)
    );
    assert!(is_mountpoint(&mp), "the held volume's bind was taken away");
    assert_eq!(d.s3fs_pids(), pids, "the held volume's s3fs changed");
    for p in &foreign {
        assert!(
            is_mountpoint(p),
            "{} (not bai-s3's) was detached",
            p.display()
        );
    }
    // The sweep goes through the mount table newest first: the stray bind above is taken down
    // before the foreign mount is looked at, so its line may land just after the poll ends.
    let said = poll(Duration::from_secs(10), || {
        d.logs()
            .lines()
            .any(|l| l.contains("is left alone") && l.contains(&*foreign[0].to_string_lossy()))
            .then_some(())
    });
    assert!(
        said.is_some(),
        "the sweep did not say it left {} alone\n{}",
        foreign[0].display(),
        d.logs_tail(40)
    );
    assert!(is_mountpoint(&bare_at), "the bare s3fs was detached");
    assert!(
        bare_pids.iter().all(|p| process_alive(*p)),
        "the bare s3fs was signalled"
    );
    assert!(fs::read_dir(&mp).is_ok(), "the held volume still serves");
    unmount_ok(&d, &keep, &id);
    assert!(
        is_mountpoint(&bare_at),
        "the last Unmount took the bare s3fs"
    );
}
