//! Containment against the real `bai-s3 serve`, real s3fs and a real SeaweedFS: what a bucket
//! holds (symbolic links planted through a mount, or as objects with s3fs's symlink metadata),
//! what a setting says (open folders, endpoints with user info) and what a container writes
//! (a file bigger than the state folder's disk) never reaches the host, and what a runtime does
//! to a bind of a read-only volume (remount it without read-only) never makes it writable.
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// The whole mount table, for "nothing new was mounted".
/// The host's mount table as this test sees it: every mount but those of the other tests'
/// daemons (which run in parallel, each in its own temporary folder).
fn table(d: &Daemon) -> Vec<String> {
    mountinfo()
        .iter()
        .filter(|m| {
            m.mount_point.starts_with(&d.dir)
                || !m
                    .mount_point
                    .to_string_lossy()
                    .starts_with("/tmp/bai-s3-test-")
        })
        .map(|m| format!("{} {}", m.mount_point.display(), m.fs_type))
        .collect()
}

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

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_never_creates_its_prefix() {
    let Some((s3, d)) = setup("a_read_only_volume_never_creates_its_prefix") else {
        return;
    };
    let b = new_bucket(s3, "roprefix");
    // A writable volume of the bucket is mounted beside it (its s3fs writable; the ro one
    // gets an s3fs of its own, read-only): neither may make the prefix.
    let w = unique_name("rw");
    create_ok(&d, &w, &[("bucket", &b)]);
    let id = new_id();
    let wmp = mount_ok(&d, &w, &id);
    let ro = unique_name("ro");
    create_ok(
        &d,
        &ro,
        &[("bucket", &b), ("prefix", "missing/deeper"), ("ro", "true")],
    );
    let before = table(&d);
    let e = d
        .mount(&ro, &new_id())
        .expect_err("ro Mount of a missing prefix succeeded");
    assert!(e.contains("read-only volume never creates it"), "{e}");
    assert!(
        e.contains("\"missing\""),
        "the Err does not name the component: {e}"
    );
    assert_eq!(table(&d), before);
    assert!(!wmp.join("missing").exists());
    assert!(s3.s3().list(&b, Some("missing")).unwrap().is_empty());
    // Made by a writer, it mounts.
    fs::create_dir_all(wmp.join("missing/deeper")).unwrap();
    let id2 = new_id();
    mount_ok(&d, &ro, &id2);
    unmount_ok(&d, &ro, &id2);
    unmount_ok(&d, &w, &id);
}

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

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
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

fn free_mib(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() * st.fragment_size() / (1024 * 1024)
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_huge_write_never_fills_the_state_folders_disk() {
    if !prereqs("a_huge_write_never_fills_the_state_folders_disk") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("small-state");
    let _tmpfs = mount_guarded(
        &state,
        &["-t", "tmpfs", "-o", "size=80m,mode=0700", "tmpfs"],
    );
    const RESERVE: u64 = 40;
    let s3 = shared_s3();
    let sd = state.to_str().unwrap().to_string();
    let d = Daemon::start_with(
        &[s3.backend("default")],
        &["--state-dir", &sd, "--min-disk-free", &RESERVE.to_string()],
    );
    let b = new_bucket(s3, "diskfull");
    let v = unique_name("diskfull");
    create_ok(
        &d,
        &v,
        &[
            ("bucket", &b),
            ("multipart-size", "5"),
            ("parallel-count", "1"),
        ],
    );
    let id = new_id();
    let mp = mount_ok(&d, &v, &id);
    let pid = d.s3fs_pids()[0];
    let args = cmdline(pid).join(" ");
    assert!(
        args.contains(&format!("tmpdir={sd}/tmp/"))
            && args.contains(&format!("ensure_diskfree={RESERVE}")),
        "{args}"
    );

    // Watch the state disk and where s3fs keeps its staging files while 120 MiB are written.
    let stop = Arc::new(AtomicBool::new(false));
    let min_free = Arc::new(AtomicU64::new(u64::MAX));
    let staged_in_state = Arc::new(AtomicBool::new(false));
    let staged_elsewhere = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sampler = {
        let (stop, min_free, inside, elsewhere) = (
            stop.clone(),
            min_free.clone(),
            staged_in_state.clone(),
            staged_elsewhere.clone(),
        );
        let state = state.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                min_free.fetch_min(free_mib(&state), Ordering::AcqRel);
                for e in fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(l) = fs::read_link(e.path()) {
                        let l = l.display().to_string();
                        if l.contains("s3fstmp") {
                            if l.starts_with(&format!("{}/tmp/", state.display())) {
                                inside.store(true, Ordering::Release);
                            } else {
                                elsewhere.lock().unwrap().push(l);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let chunk = vec![7u8; 1024 * 1024];
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(mp.join("huge"))?;
        for _ in 0..120 {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    stop.store(true, Ordering::Release);
    sampler.join().unwrap();
    let min = min_free.load(Ordering::Acquire);
    let log = fs::read_dir(state.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    say(&format!(
        "huge write: {result:?}; least free on the state disk {min} MiB; s3fs log:\n{log}"
    ));
    // The write cannot fit above the reserve, so it must fail: ENOSPC, or EIO where s3fs
    // 1.90 tries to stream the rest out as a multipart upload and fails ("Multipart Upload
    // has not started yet").
    let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        errno == Some(libc_enospc()) || errno == Some(nix::errno::Errno::EIO as i32),
        "a write of 120 MiB on an 80 MiB disk with a {RESERVE} MiB reserve: {result:?}"
    );
    // s3fs holds back at most one part (multipart-size, 5 MiB here) and one write call below
    // the reserve; the disk is never filled.
    assert!(
        min + 5 + 1 >= RESERVE,
        "the state disk fell to {min} MiB free (reserve {RESERVE})"
    );
    assert!(
        staged_in_state.load(Ordering::Acquire),
        "no staging file seen under the state folder"
    );
    let elsewhere = staged_elsewhere.lock().unwrap().clone();
    assert!(
        elsewhere.is_empty(),
        "staging files outside the state folder: {elsewhere:?}"
    );
    let _ = fs::remove_file(mp.join("huge"));
    unmount_ok(&d, &v, &id);
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

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
    let said = d
        .logs()
        .lines()
        .any(|l| l.contains("is left alone") && l.contains(&*foreign[0].to_string_lossy()));
    assert!(
        said,
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

/// The shared s3fs mounts of this daemon: `(read-only ones, writable ones)` by their names.
fn shared_mounts(d: &Daemon) -> (Vec<MountEntry>, Vec<MountEntry>) {
    let shared = d.mount_root.join(".s3fs");
    d.mounts()
        .into_iter()
        .filter(|m| m.mount_point.parent() == Some(shared.as_path()))
        .partition(|m| m.mount_point.to_string_lossy().contains("-ro-"))
}

/// A new bucket holding `data/seed.txt`, and a writable and a read-only volume of its prefix
/// `data`, both mounted: the writable one wrote `from-rw.txt` before the read-only one was
/// mounted. Returns the bucket and `[(volume, holder ID, mount point)]`, writable first.
fn rw_and_ro_of_one_prefix(
    s3: &S3Server,
    d: &Daemon,
    tag: &str,
) -> (String, [(String, String, PathBuf); 2]) {
    let b = new_bucket(s3, tag);
    s3.s3().put(&b, "data/seed.txt", b"seed\n").unwrap();
    let (w, r) = (unique_name("rw"), unique_name("ro"));
    create_ok(d, &w, &[("bucket", &b), ("prefix", "data")]);
    create_ok(d, &r, &[("bucket", &b), ("prefix", "data"), ("ro", "true")]);
    let (iw, ir) = (new_id(), new_id());
    let wmp = mount_ok(d, &w, &iw);
    fs::write(wmp.join("from-rw.txt"), b"written\n").unwrap();
    let rmp = mount_ok(d, &r, &ir);
    (b, [(w, iw, wmp), (r, ir, rmp)])
}

/// Every way `dir` could be written to by root fails with EROFS: a new file, a folder, an
/// existing file opened for writing, its removal.
fn assert_every_write_is_erofs(dir: &Path, existing: &str) {
    let erofs = Some(nix::errno::Errno::EROFS as i32);
    let tries: [(&str, std::io::Result<()>); 4] = [
        ("create a file", fs::write(dir.join("new.txt"), b"no")),
        ("make a folder", fs::create_dir(dir.join("newdir"))),
        (
            "open a file for writing",
            fs::OpenOptions::new()
                .append(true)
                .open(dir.join(existing))
                .map(drop),
        ),
        ("remove a file", fs::remove_file(dir.join(existing))),
    ];
    for (what, r) in tries {
        match r {
            Err(e) if e.raw_os_error() == erofs => {}
            other => panic!("{what} in {}: {other:?}, not EROFS", dir.display()),
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_stays_read_only_when_a_runtime_remounts_a_bind_of_it() {
    let Some((s3, d)) = setup("a_read_only_volume_stays_read_only_when_a_runtime_remounts") else {
        return;
    };
    // A writable and a read-only volume of the same bucket and prefix, mounted at once.
    let (b, [(w, iw, wmp), (r, ir, rmp)]) = rw_and_ro_of_one_prefix(s3, &d, "rofs");
    assert_eq!(fs::read(rmp.join("seed.txt")).unwrap(), b"seed\n");
    assert_eq!(fs::read(rmp.join("from-rw.txt")).unwrap(), b"written\n");
    // Two identities, two s3fs processes; the read-only one's superblock is read-only.
    assert_eq!(d.s3fs_pids().len(), 2, "{:?}", d.mounts());
    let (ro_shared, rw_shared) = shared_mounts(&d);
    assert_eq!(
        (ro_shared.len(), rw_shared.len()),
        (1, 1),
        "{:?}",
        d.mounts()
    );
    let (ro_shared, rw_shared) = (&ro_shared[0], &rw_shared[0]);
    assert!(
        ro_shared.super_has("ro") && ro_shared.has("ro"),
        "{ro_shared:?}"
    );
    assert!(
        rw_shared.super_has("rw") && rw_shared.has("rw"),
        "{rw_shared:?}"
    );
    let (rm, wm) = (
        support::mount_at(&rmp).unwrap(),
        support::mount_at(&wmp).unwrap(),
    );
    assert!(rm.super_has("ro") && rm.has("ro"), "{rm:?}");
    assert!(wm.super_has("rw") && wm.has("rw"), "{wm:?}");
    // Every mount the daemon made (s3fs mounts, volume binds, the private staging mount of
    // read-only binds) is nosuid and nodev.
    let made = d.all_mounts();
    let stage = d.state_dir.join("stage");
    for p in [
        &ro_shared.mount_point,
        &rw_shared.mount_point,
        &rmp,
        &wmp,
        &stage,
    ] {
        assert!(
            made.iter().any(|m| m.mount_point == *p),
            "{p:?} in {made:?}"
        );
    }
    for m in &made {
        assert!(m.has("nosuid") && m.has("nodev"), "{m:?}");
    }

    // What runc and crun do for a container: bind the volume, then remount that bind to add
    // nosuid,nodev with mount(2), which sets every per-mount flag at once and so clears its
    // read-only flag. Called directly: mount(8)'s `-o remount,bind,nosuid,nodev` merges the
    // mount's current `ro` back in (util-linux 2.38), runc does not. Done here by hand to a
    // bind elsewhere on the host, and to the volume's own mount point.
    let runtime_bind = d.dir.join("runtime-bind");
    let _bound = mount_guarded(&runtime_bind, &[Path::new("--bind"), &rmp]);
    for p in [&runtime_bind, &rmp] {
        use nix::mount::MsFlags;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        nix::mount::mount(None::<&str>, p.as_path(), None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("remount of {}: {e}", p.display()));
        let m = support::mount_at(p).unwrap();
        assert!(
            m.has("rw") && m.super_has("ro"),
            "the remount did not clear the bind's read-only flag, or the superblock is writable: {m:?}"
        );
    }
    for p in [&runtime_bind, &rmp, &ro_shared.mount_point] {
        let existing = if *p == ro_shared.mount_point {
            "data/seed.txt"
        } else {
            "seed.txt"
        };
        assert_every_write_is_erofs(p, existing);
        assert_eq!(fs::read(p.join(existing)).unwrap(), b"seed\n");
    }
    // The writable volume still writes; the bucket holds what it wrote and nothing else.
    fs::write(wmp.join("again.txt"), b"again\n").unwrap();
    let mut keys = s3.s3().list(&b, None).unwrap();
    keys.retain(|k| !k.ends_with('/'));
    assert_eq!(
        keys,
        vec!["data/again.txt", "data/from-rw.txt", "data/seed.txt"]
    );
    drop(_bound);
    unmount_ok(&d, &r, &ir);
    unmount_ok(&d, &w, &iw);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_read_only_volume_an_older_version_bound_to_a_writable_s3fs_is_adopted_and_served() {
    let Some((s3, mut d)) = setup("a_read_only_volume_an_older_version_bound") else {
        return;
    };
    let (_, [(w, iw, wmp), (r, ir, rmp)]) = rw_and_ro_of_one_prefix(s3, &d, "roupgrade");
    let (_, rw_shared) = shared_mounts(&d);
    let rw_pids = s3fs_pids_mentioning(&rw_shared[0].mount_point);
    assert_eq!(rw_pids.len(), 1);

    // The daemon dies; the ro volume's mount is made what versions before this one made: a
    // bind of the bucket's writable s3fs, remounted read-only (and without nosuid,nodev).
    d.kill9();
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    umount2(&rmp, MntFlags::empty()).unwrap();
    let source = rw_shared[0].mount_point.join("data");
    mount(
        Some(&source),
        &rmp,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, &rmp, None::<&str>, ro, None::<&str>).unwrap();

    // The upgraded daemon adopts it and serves it as it is (never taken away from its
    // holder); the read-only s3fs that nothing holds any more is swept.
    d.restart();
    let adopted = poll(Duration::from_secs(20), || {
        let st = d.status(&r).ok()?;
        (mounted(&st) && holders(&st) == 1 && d.s3fs_pids() == rw_pids).then_some(())
    });
    assert!(
        adopted.is_some(),
        "after the restart: {:?}, s3fs {:?} (want {rw_pids:?})\n{}",
        d.status(&r),
        d.s3fs_pids(),
        d.logs_tail(40)
    );
    assert_eq!(health(&status(&d, &r)), "ok");
    let m = support::mount_at(&rmp).unwrap();
    assert!(m.has("ro") && m.super_has("rw"), "not the old bind: {m:?}");
    assert_eq!(fs::read(rmp.join("seed.txt")).unwrap(), b"seed\n");
    assert_every_write_is_erofs(&rmp, "seed.txt");
    fs::write(wmp.join("after.txt"), b"after\n").unwrap();

    // Its last holder gone, its next Mount gets the new scheme: an s3fs of its own, read-only.
    unmount_ok(&d, &r, &ir);
    assert_eq!(d.s3fs_pids(), rw_pids, "the writable volume's s3fs changed");
    let ir2 = new_id();
    let rmp = mount_ok(&d, &r, &ir2);
    let (ro_shared, _) = shared_mounts(&d);
    assert_eq!(ro_shared.len(), 1, "{:?}", d.mounts());
    assert!(ro_shared[0].super_has("ro"), "{:?}", ro_shared[0]);
    assert!(support::mount_at(&rmp).unwrap().super_has("ro"));
    assert_eq!(fs::read(rmp.join("after.txt")).unwrap(), b"after\n");
    assert_eq!(d.s3fs_pids().len(), 2);
    unmount_ok(&d, &r, &ir2);
    unmount_ok(&d, &w, &iw);
}
