//! The secret key, hunted for after a busy trace-level session: in no log, argv, reply, state
//! or file the daemon wrote.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::err_text;
use crate::support::*;

/// Every regular file under `dir` (not entering mounts), with its mode.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if !is_mountpoint(&p) {
                files_under(&p, out);
            }
        } else if m.is_file() {
            out.push((p, m.permissions().mode() & 0o777));
        }
    }
}

/// Processes whose command line contains any of `needles`.
fn argv_containing(needles: &[&str]) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let argv = cmdline(pid).join(" ");
            needles
                .iter()
                .any(|n| argv.contains(n))
                .then(|| format!("{pid}: {argv}"))
        })
        .collect()
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_secret_key_appears_nowhere() {
    let Some((s3, d)) = setup("the_secret_key_appears_nowhere") else {
        return;
    };
    let secret = s3.secret_key.clone();
    // A second backend's key, added by a change of the backends file while running.
    let other_secret = format!("SK{}", random_hex(20));
    let secrets = [secret.as_str(), other_secret.as_str()];
    let mut replies: Vec<String> = Vec::new();
    let mut argv_hits: Vec<String> = Vec::new();
    let mut call = |method: &str, body: Value| -> Value {
        let (st, v) = d.call(method, &body);
        // The reply only: some requests carry the secret on purpose.
        replies.push(format!("{method} -> {st} {v}"));
        v
    };

    let b = unique_name("secret-hunt");
    let vol = unique_name("secret-vol");
    let v = call(
        "VolumeDriver.Create",
        json!({"Name": vol, "Opts": {"bucket": b, "create-bucket": "true"}}),
    );
    assert_eq!(err_text(&v), "", "Create {vol}: {v}");
    // Refused Creates that carry the real secret as a value.
    for key in [
        "secret-key",
        "AWS_SECRET_ACCESS_KEY",
        "password",
        "sse-c-key",
        "token",
    ] {
        let v = call(
            "VolumeDriver.Create",
            json!({"Name": unique_name("secret-refused"), "Opts": {"bucket": b, key: secret}}),
        );
        assert!(
            !err_text(&v).is_empty(),
            "Create with {key}=<secret> succeeded: {v}"
        );
    }
    let id = new_id();
    let v = call("VolumeDriver.Mount", json!({"Name": vol, "ID": id}));
    assert_eq!(err_text(&v), "", "Mount {vol}: {v}\n{}", d.logs_tail(40));
    let mp = d.mountpoint_of(&vol);
    fs::write(mp.join("f.txt"), b"data").unwrap();
    assert_eq!(fs::read(mp.join("f.txt")).unwrap(), b"data");
    argv_hits.extend(argv_containing(&secrets));
    call("VolumeDriver.Get", json!({"Name": vol}));
    call("VolumeDriver.List", json!({}));
    call("VolumeDriver.Path", json!({"Name": vol}));

    // A backends file change while mounted: a second backend with another key (and wrong
    // credentials for this server, so Create on it fails at the bucket check).
    let spare = Backend {
        name: "spare".into(),
        endpoint: s3.endpoint.clone(),
        access_key: format!("AK{}", random_hex(9)),
        secret_key: other_secret.clone(),
    };
    d.write_backends(&[s3.backend("default"), spare]);
    let spare_vol = unique_name("secret-spare");
    let picked_up = poll(Duration::from_secs(15), || {
        let v = call(
            "VolumeDriver.Create",
            json!({"Name": spare_vol, "Opts": {"bucket": b, "backend": "spare"}}),
        );
        let e = err_text(&v);
        (!e.contains("is not configured")).then_some(e)
    });
    say(&format!("Create on the spare backend: {picked_up:?}"));
    argv_hits.extend(argv_containing(&secrets));

    let v = call("VolumeDriver.Unmount", json!({"Name": vol, "ID": id}));
    assert_eq!(err_text(&v), "", "Unmount: {v}");
    wait_nothing_mounted(&d, "after the Unmount", Duration::from_secs(15));

    // A failed mount: the bucket is gone between Create and Mount.
    let b2 = unique_name("secret-gone");
    let vol2 = unique_name("secret-gone-vol");
    let v = call(
        "VolumeDriver.Create",
        json!({"Name": vol2, "Opts": {"bucket": b2, "create-bucket": "true"}}),
    );
    assert_eq!(err_text(&v), "", "Create {vol2}: {v}");
    s3.s3()
        .delete_bucket(&b2)
        .unwrap_or_else(|e| panic!("delete bucket {b2}: {e}"));
    let v = call("VolumeDriver.Mount", json!({"Name": vol2, "ID": new_id()}));
    assert!(
        !err_text(&v).is_empty(),
        "Mount of a volume whose bucket was deleted succeeded: {v}"
    );
    argv_hits.extend(argv_containing(&secrets));
    call("VolumeDriver.Get", json!({"Name": vol2}));
    for name in [&vol, &vol2] {
        let v = call("VolumeDriver.Remove", json!({"Name": name}));
        assert_eq!(err_text(&v), "", "Remove {name}: {v}");
    }
    call("VolumeDriver.Mount", json!({"Name": vol, "ID": id}));
    call("VolumeDriver.List", json!({}));
    argv_hits.extend(argv_containing(&secrets));
    wait_nothing_mounted(&d, "at the end", Duration::from_secs(15));

    let logs = d.logs();
    assert!(
        logs.contains("s3fs mount ready") && logs.contains("TRACE"),
        "the log does not show a trace-level session with a mount: {}",
        d.logs_tail(20)
    );
    let mut problems = Vec::new();
    for s in &secrets {
        let which = if *s == secret {
            "the secret key"
        } else {
            "the second backend's secret key"
        };
        if logs.contains(s) {
            let line = logs.lines().find(|l| l.contains(s)).unwrap_or_default();
            problems.push(format!("{which} is in the daemon's log: {line}"));
        }
        for r in replies.iter().filter(|r| r.contains(s)) {
            problems.push(format!("{which} is in a reply: {r}"));
        }
        let mut files = Vec::new();
        files_under(&d.state_dir, &mut files);
        files_under(&d.mount_root, &mut files);
        assert!(!files.is_empty(), "no file under the state dir at all");
        for (f, mode) in &files {
            let text = String::from_utf8_lossy(&fs::read(f).unwrap_or_default()).into_owned();
            if text.contains(s) {
                problems.push(format!(
                    "{which} is stored in {} (mode {mode:o}{})",
                    f.display(),
                    if mode & 0o077 != 0 {
                        ", readable by others"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    argv_hits.sort();
    argv_hits.dedup();
    for a in &argv_hits {
        problems.push(format!("a secret key is in a command line: {a}"));
    }
    assert!(problems.is_empty(), "secrets:\n{}", problems.join("\n"));
}
