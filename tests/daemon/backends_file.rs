//! The backends file: reread when it changes, refused when others may read it, and its secret in
//! no log, argv, status or state.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::wait_unmounted;

/// Retries Create for up to 15 s (the daemon rereads its backends file on its own schedule);
/// panics with `what`, the last Err and the log when it never succeeds.
fn create_within_15s(d: &Daemon, vol: &str, opts: &[(&str, &str)], what: &str) {
    let mut last = String::new();
    let ok = poll(Duration::from_secs(15), || match d.create(vol, opts) {
        Ok(()) => Some(()),
        Err(e) => {
            last = e;
            None
        }
    });
    assert!(
        ok.is_some(),
        "{what} within 15 s: {last}\n{}",
        d.logs_tail(30)
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn backends_file_is_reread_when_it_changes() {
    let Some((s3, d)) = setup("backends_file_is_reread_when_it_changes") else {
        return;
    };
    let b = new_bucket(s3, "reread");
    let vol = unique_name("reread-vol");
    let e = d
        .create(&vol, &[("bucket", &b), ("backend", "second")])
        .expect_err("Create on an unknown backend succeeded");
    assert!(e.contains("second"), "Err does not name the backend: {e}");
    d.write_backends(&[s3.backend("default"), s3.backend("second")]);
    create_within_15s(
        &d,
        &vol,
        &[("bucket", &b), ("backend", "second")],
        "the new backend was not picked up",
    );
    assert_eq!(
        status(&d, &vol).get("backend").and_then(Value::as_str),
        Some("second")
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("x"), b"x").unwrap();
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}

/// Every file under `dir` (not following mounts) whose content contains `needle`.
fn files_containing(dir: &Path, needle: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if !is_mountpoint(&p) {
                files_containing(&p, needle, out);
            }
        } else if ft.is_file() {
            if let Ok(b) = fs::read(&p) {
                if String::from_utf8_lossy(&b).contains(needle) {
                    out.push(p);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn no_secret_in_logs_argv_status_or_state() {
    let Some((s3, d)) = setup("no_secret_in_logs_argv_status_or_state") else {
        return;
    };
    let secret = s3.secret_key.clone();
    let b = unique_name("secret");
    let vol = unique_name("secret-vol");
    let mut seen = Vec::new();
    create_ok(&d, &vol, &[("bucket", &b), ("create-bucket", "true")]);
    let _ = d.create(
        &unique_name("secret-bad"),
        &[("bucket", &b), ("secret-key", "not-the-real-one")],
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("f"), b"data").unwrap();
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"data");
    seen.push(d.get(&vol).unwrap().to_string());
    seen.push(Value::Array(d.list().unwrap()).to_string());
    // Every process's argv while the volume is mounted.
    let mut in_argv = Vec::new();
    for pid in all_pids() {
        if cmdline(pid).iter().any(|a| a.contains(&secret)) {
            in_argv.push(format!("{pid}: {}", cmdline(pid).join(" ")));
        }
    }
    // A backends-file reload is logged too.
    d.write_backends(&[s3.backend("default"), s3.backend("other")]);
    let _ = poll(Duration::from_secs(10), || {
        d.create(
            &unique_name("secret-o"),
            &[("bucket", &b), ("backend", "other")],
        )
        .ok()
    });
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    let _ = d.mount(&unique_name("not-a-volume"), &new_id());
    d.remove(&vol).unwrap();

    let logs = d.logs();
    assert!(
        logs.len() > 200,
        "the daemon logged almost nothing at trace level: {logs:?}"
    );
    assert!(in_argv.is_empty(), "the secret key is in argv: {in_argv:?}");
    assert!(
        !logs.contains(&secret),
        "the secret key is in the daemon's log ({})",
        d.log.display()
    );
    for s in &seen {
        assert!(!s.contains(&secret), "the secret key is in Get/List: {s}");
    }
    let mut files = Vec::new();
    files_containing(&d.state_dir, &secret, &mut files);
    files_containing(&d.mount_root, &secret, &mut files);
    assert!(files.is_empty(), "the secret key is stored in {files:?}");
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn a_backends_file_open_to_others_is_refused() {
    let Some((s3, mut d)) = setup("a_backends_file_open_to_others_is_refused") else {
        return;
    };
    let b = new_bucket(s3, "mode");
    let vol = unique_name("mode-vol");
    d.kill9();
    // The file now names a second backend, but anyone on the host could read its secrets.
    d.write_backends_with_mode(&[s3.backend("default"), s3.backend("second")], 0o644);
    match d.try_restart() {
        // Refusing to start is one way of refusing the file: then say why.
        Err(e) => {
            assert!(
                e.contains(&*d.config.to_string_lossy()) || e.contains("600"),
                "the daemon exited without naming the open backends file: {e}"
            );
            d.write_backends(&[s3.backend("default"), s3.backend("second")]);
            d.restart();
        }
        // Or it runs and refuses the file's backends, saying why.
        Ok(()) => {
            let e = d
                .create(&vol, &[("bucket", &b), ("backend", "second")])
                .expect_err("a backend from a backends file of mode 0644 was used");
            assert!(
                ["600", "chmod", "mode", "permission"]
                    .iter()
                    .any(|w| e.contains(w)),
                "the Err does not say the backends file is too open: {e}"
            );
            assert!(!d.list_names().contains(&vol));
            d.write_backends(&[s3.backend("default"), s3.backend("second")]);
        }
    }
    create_within_15s(
        &d,
        &vol,
        &[("bucket", &b), ("backend", "second")],
        "the backends file, now 0600, was not taken",
    );
}
