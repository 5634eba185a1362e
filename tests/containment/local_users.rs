//! Local users without privilege: folders open to them are refused at start and left unchanged,
//! and they cannot reach a mounted volume.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::mode;
use crate::support::*;

/// `bai-s3 serve` with these folders, which must refuse to start; returns its stderr.
fn refused_start(dir: &Path, state: &Path, root: &Path) -> String {
    let mut child = serve_command(&dir.join("s.sock"), state, root, &dir.join("none.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = poll(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the daemon started with state {} and mount root {}",
            state.display(),
            root.display()
        );
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "exit {status}: {err}");
    assert!(!dir.join("s.sock").exists(), "it listened: {err}");
    err
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn folders_open_to_local_users_are_refused_at_start_and_left_unchanged() {
    if !prereqs("folders_open_to_local_users") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let good_state = dir.join("state");
    fs::DirBuilder::new().create(&good_state).unwrap();
    fs::set_permissions(&good_state, fs::Permissions::from_mode(0o700)).unwrap();

    // `--mount-root` outside the state folder, open to everyone (any user read every volume).
    let open_root = dir.join("open-volumes");
    fs::create_dir(&open_root).unwrap();
    fs::set_permissions(&open_root, fs::Permissions::from_mode(0o755)).unwrap();
    let e = refused_start(dir, &good_state, &open_root);
    assert!(
        e.contains(&open_root.display().to_string()) && e.contains("0755"),
        "{e}"
    );
    assert_eq!(mode(&open_root), 0o755, "the mount root's mode was changed");

    // `--state-dir /var/lib`-like: an existing open folder is refused, not chmod-ed.
    let open_state = dir.join("open-state");
    fs::create_dir(&open_state).unwrap();
    fs::set_permissions(&open_state, fs::Permissions::from_mode(0o755)).unwrap();
    let e = refused_start(dir, &open_state, &good_state.join("volumes"));
    assert!(
        e.contains(&open_state.display().to_string()) && e.contains("chmod 700"),
        "{e}"
    );
    assert_eq!(
        mode(&open_state),
        0o755,
        "the state folder's mode was changed"
    );
    assert_eq!(
        fs::read_dir(&open_state).unwrap().count(),
        0,
        "something was written"
    );

    // A mount root over the daemon's own folders: a volume named `logs` would be bound over them.
    for (root, word) in [
        (good_state.clone(), "is the state folder"),
        (good_state.join("logs"), "logs"),
        (dir.to_path_buf(), "holds the state folder"),
    ] {
        let e = refused_start(dir, &good_state, &root);
        assert!(
            e.contains(word) && e.contains("--mount-root"),
            "{}: {e}",
            root.display()
        );
    }
    assert!(
        !good_state.join("logs").exists(),
        "a folder was made before the refusal"
    );

    // A link as the state folder or the mount root is not followed.
    let link = dir.join("link");
    symlink(&good_state, &link).unwrap();
    let e = refused_start(dir, &link, &good_state.join("volumes"));
    assert!(e.contains("symbolic link"), "{e}");
    let e = refused_start(dir, &good_state, &link);
    assert!(e.contains("symbolic link"), "{e}");

    // Nor is a link as any folder the daemon makes below them; nothing is made through it.
    let elsewhere = dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let root = good_state.join("volumes");
    for (base, sub) in [
        (&good_state, "logs"),
        (&good_state, "cache"),
        (&good_state, "stage"),
        (&good_state, "tmp"),
        (&root, ".s3fs"),
    ] {
        fs::create_dir_all(base).unwrap();
        fs::set_permissions(base, fs::Permissions::from_mode(0o700)).unwrap();
        let planted = base.join(sub);
        symlink(&elsewhere, &planted).unwrap();
        let e = refused_start(dir, &good_state, &root);
        assert!(e.contains(sub) && e.contains("symbolic link"), "{sub}: {e}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{sub}: something was made through the link"
        );
        fs::remove_file(&planted).unwrap();
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_local_user_cannot_reach_a_mounted_volume() {
    let Some((s3, d)) = setup("a_local_user_cannot_reach_a_mounted_volume") else {
        return;
    };
    // Open the test's own folder, so only the daemon's rule protects the mount root.
    fs::set_permissions(&d.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let b = new_bucket(s3, "nobody");
    s3.s3().put(&b, "private.txt", b"secret data").unwrap();
    let v = unique_name("nobody");
    create_ok(&d, &v, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &v, &id);
    assert_eq!(fs::read(mp.join("private.txt")).unwrap(), b"secret data");
    let out = Command::new("cat")
        .arg(mp.join("private.txt"))
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "nobody read a mounted volume: {} {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(mode(&d.mount_root) & 0o077, 0);
    unmount_ok(&d, &v, &id);
}
