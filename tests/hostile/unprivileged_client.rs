//! An unprivileged local client: it cannot connect to the socket nor read the state or the
//! backends file.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::mode;
use crate::support::*;

/// Runs as nobody: connect to the socket, read the state and backends files, list the state
/// folder; prints {"what": "ok" | errno name}.
const PROBE: &str = r#"
import errno, json, os, socket, sys
sock, state, backends, statedir = sys.argv[1:5]
r = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
def attempt(name, f):
    try:
        f()
        r[name] = "ok"
    except OSError as e:
        r[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt("stat-socket", lambda: os.stat(sock))
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    r["reply"] = s.recv(4096).decode("latin-1")
attempt("connect", connect)
attempt("read-state", lambda: open(state, "rb").read())
attempt("read-backends", lambda: open(backends, "rb").read())
attempt("list-state-dir", lambda: os.listdir(statedir))
print(json.dumps(r))
"#;

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn an_unprivileged_client_is_refused() {
    let Some((s3, mut d)) = setup("an_unprivileged_client_is_refused") else {
        return;
    };
    let python = Path::new("/usr/bin/python3");
    if !python.is_file() {
        if in_ci() {
            panic!("an_unprivileged_client_is_refused: /usr/bin/python3 is missing under CI=true");
        }
        say("SKIP an_unprivileged_client_is_refused: /usr/bin/python3 is missing");
        return;
    }
    // Let the daemon create its state folder itself (the harness made one in advance), and
    // open the test's folder to everyone, so that only the daemon's own modes protect its files.
    d.stop();
    fs::remove_dir_all(&d.state_dir).unwrap();
    fs::set_permissions(&d.dir, fs::Permissions::from_mode(0o755)).unwrap();
    d.restart();
    let b = new_bucket(s3, "nobody");
    let vol = unique_name("nobody-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let state_file = store_path(&d.state_dir);

    let sock_meta = fs::symlink_metadata(&d.socket).unwrap();
    let mut problems = Vec::new();
    if mode(&d.socket) != 0o600 || sock_meta.uid() != 0 {
        problems.push(format!(
            "socket mode {:o} owner {} (expected 600, root)",
            mode(&d.socket),
            sock_meta.uid()
        ));
    }
    if mode(&d.state_dir) != 0o700 {
        problems.push(format!(
            "state folder {} has mode {:o} (expected 700)",
            d.state_dir.display(),
            mode(&d.state_dir)
        ));
    }
    if mode(&state_file) & 0o077 != 0 {
        problems.push(format!("state file has mode {:o}", mode(&state_file)));
    }

    let out = Command::new(python)
        .arg("-c")
        .arg(PROBE)
        .arg(&d.socket)
        .arg(&state_file)
        .arg(&d.config)
        .arg(&d.state_dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .output()
        .expect("run python3 as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the probe as nobody failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("probe output {stdout:?}: {e}"));
    say(&format!("as nobody: {r}"));
    assert_eq!(
        r["uid"],
        json!(NOBODY),
        "the probe did not run as nobody: {r}"
    );
    assert!(
        r["groups"]
            .as_array()
            .map(|g| !g.contains(&json!(0)))
            .unwrap_or(false),
        "the probe kept root's group: {r}"
    );
    // The path is reachable: the refusal below is the socket's own mode.
    if r["stat-socket"] != json!("ok") {
        problems.push(format!(
            "nobody cannot even stat the socket (test setup?): {r}"
        ));
    }
    for (what, want) in [
        ("connect", "EACCES"),
        ("read-state", "EACCES"),
        ("read-backends", "EACCES"),
        ("list-state-dir", "EACCES"),
    ] {
        if r[what] != json!(want) {
            problems.push(format!("as nobody, {what}: {} (expected {want})", r[what]));
        }
    }
    // The daemon saw nothing and keeps serving root.
    assert_eq!(d.list_names(), vec![vol.clone()]);
    assert!(
        problems.is_empty(),
        "unprivileged access:\n{}",
        problems.join("\n")
    );
}
