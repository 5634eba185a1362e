//! Checks of the test support itself (SeaweedFS start-up and watchdog, the S3 client, the
//! protocol reply parser, mount inspection), independent of the daemon.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn weed_prereqs(test: &str) -> bool {
    let missing = (!weed_bin().is_file()).then(|| {
        format!(
            "{} is missing (scripts/deps.sh installs it)",
            weed_bin().display()
        )
    });
    require(test, missing.as_slice())
}

#[test]
#[cfg_attr(not(bai_s3_weed), ignore = "needs SeaweedFS (scripts/deps.sh)")]
fn seaweedfs_answers_s3() {
    if !weed_prereqs("seaweedfs_answers_s3") {
        return;
    }
    let srv = shared_s3();
    let s3 = srv.s3();
    let b = unique_name("selftest");
    assert!(!s3.bucket_exists(&b).unwrap());
    s3.create_bucket(&b).unwrap();
    assert!(s3.bucket_exists(&b).unwrap());
    s3.put(&b, "dir/a.txt", b"hello").unwrap();
    s3.put(&b, "b.txt", b"world").unwrap();
    assert_eq!(
        s3.get(&b, "dir/a.txt").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(s3.get(&b, "missing").unwrap(), None);
    assert_eq!(
        s3.list(&b, None).unwrap(),
        vec!["b.txt".to_string(), "dir/a.txt".to_string()]
    );
    assert_eq!(
        s3.list(&b, Some("dir/")).unwrap(),
        vec!["dir/a.txt".to_string()]
    );
    assert!(s3.list_buckets().unwrap().contains(&b));
    // Wrong credentials are refused (the server really checks them).
    let bad = S3::new(&srv.endpoint, &srv.access_key, "not-the-secret", true);
    assert!(
        bad.list(&b, None).is_err(),
        "SeaweedFS accepted a wrong secret key"
    );
}

#[test]
#[cfg_attr(not(bai_s3_weed), ignore = "needs SeaweedFS (scripts/deps.sh)")]
fn private_server_stops_and_starts_again() {
    if !weed_prereqs("private_server_stops_and_starts_again") {
        return;
    }
    let srv = S3Server::start_private();
    let b = unique_name("private");
    srv.s3().create_bucket(&b).unwrap();
    srv.s3().put(&b, "k", b"v").unwrap();
    let pid = srv.weed_pid().unwrap();
    srv.stop();
    assert!(!process_alive(pid), "weed {pid} still alive after stop()");
    let probe = S3::new(&srv.endpoint, &srv.access_key, &srv.secret_key, true);
    assert!(
        probe.list_buckets().is_err(),
        "S3 still answers after stop()"
    );
    srv.start();
    assert_eq!(
        srv.s3().get(&b, "k").unwrap().as_deref(),
        Some(&b"v"[..]),
        "data lost across restart"
    );
    let pid2 = srv.weed_pid().unwrap();
    drop(srv);
    assert!(!process_alive(pid2), "weed {pid2} still alive after drop");
}

/// Helper run in a child process by `watchdog_kills_weed_when_the_test_process_dies`.
#[test]
#[ignore]
fn helper_hold_a_server_forever() {
    if std::env::var("BAI_S3_SELFTEST_CHILD").is_err() {
        return;
    }
    let srv = shared_s3();
    println!("\nWEED_PID {}", srv.weed_pid().unwrap());
    loop {
        std::thread::park();
    }
}

#[test]
#[cfg_attr(not(bai_s3_weed), ignore = "needs SeaweedFS (scripts/deps.sh)")]
fn watchdog_kills_weed_when_the_test_process_dies() {
    if !weed_prereqs("watchdog_kills_weed_when_the_test_process_dies") {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_hold_a_server_forever",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BAI_S3_SELFTEST_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut weed_pid = None;
    for line in out.lines() {
        let line = line.unwrap();
        // The harness prints "test NAME ... " without a newline before the helper's own output.
        if let Some(i) = line.find("WEED_PID ") {
            weed_pid = Some(line[i + 9..].trim().parse::<i32>().unwrap());
            break;
        }
    }
    let Some(weed_pid) = weed_pid else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the helper process did not report a weed pid");
    };
    assert!(process_alive(weed_pid));
    child.kill().unwrap(); // SIGKILL: no destructor runs in the helper
    child.wait().unwrap();
    wait_for(
        "weed to die with its test process",
        Duration::from_secs(60),
        || (!process_alive(weed_pid)).then_some(()),
    );
}

#[test]
fn reply_parser() {
    let (st, v) =
        parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"Err\":\"\"}")
            .unwrap();
    assert_eq!(st, 200);
    assert!(result_of(st, &v).is_ok());
    let (st, v) = parse_http_response(
        b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"Err\":\"\r\n6\r\nboom\"}\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(st, 500);
    assert_eq!(result_of(st, &v).unwrap_err(), "boom");
    let (st, v) =
        parse_http_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            .unwrap();
    assert!(result_of(st, &v).unwrap_err().contains("404"));
    // A refusal under 200 is a success to Podman (it reads only the status): the test client
    // fails the test that meets one.
    let (st, v) =
        parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"Err\":\"nope\"}")
            .unwrap();
    let caught = std::panic::catch_unwind(|| result_of(st, &v));
    assert!(caught.is_err(), "an Err under 200 passed: {caught:?}");
}

#[test]
fn mountinfo_sees_mounts() {
    assert!(
        is_mountpoint(std::path::Path::new("/")),
        "/ is not a mount point according to mountinfo"
    );
    assert!(!mountinfo().is_empty());
    assert!(mounts_under(std::path::Path::new("/nonexistent-bai-s3")).is_empty());
    // Our own process is alive and not s3fs.
    assert!(process_alive(std::process::id() as i32));
    assert!(
        !s3fs_pids_mentioning(std::path::Path::new("/nonexistent-bai-s3"))
            .iter()
            .any(|_| true)
    );
}

/// The Daemon guard fails a test that leaves a mount, and removes the mount and s3fs anyway.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn daemon_guard_fails_a_test_that_leaves_a_mount_and_cleans_up() {
    if !prereqs("daemon_guard_fails_a_test_that_leaves_a_mount_and_cleans_up") {
        return;
    }
    let s3 = shared_s3();
    let b = unique_name("guard");
    s3.s3().create_bucket(&b).unwrap();
    let dir = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let d = Daemon::start(s3);
        *dir.lock().unwrap() = Some(d.dir.clone());
        d.create(&b, &[]).unwrap();
        let mp = d.mount(&b, "id1").unwrap();
        assert!(is_mountpoint(&mp));
        assert_eq!(d.s3fs_pids().len(), 1);
        // the test "forgets" to unmount
    }));
    let dir = dir.lock().unwrap().clone().expect("daemon did not start");
    assert!(
        r.is_err(),
        "the guard did not fail a test that left a mount"
    );
    assert!(
        mounts_under(&dir).is_empty(),
        "guard left mounts: {:?}",
        mounts_under(&dir)
    );
    assert!(s3fs_pids_mentioning(&dir).is_empty(), "guard left s3fs");
    assert!(!dir.exists(), "guard did not remove {}", dir.display());
}

/// After a SIGKILL of the daemon its s3fs lives on; the guard still removes it and its mount.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn daemon_guard_cleans_up_after_a_killed_daemon() {
    if !prereqs("daemon_guard_cleans_up_after_a_killed_daemon") {
        return;
    }
    let s3 = shared_s3();
    let b = unique_name("guard-kill");
    s3.s3().create_bucket(&b).unwrap();
    let mut d = Daemon::start(s3);
    d.create(&b, &[]).unwrap();
    let mp = d.mount(&b, "id1").unwrap();
    let pid = d.s3fs_pids()[0];
    d.kill9();
    assert!(process_alive(pid) && is_mountpoint(&mp));
    let dir = d.dir.clone();
    drop(d);
    assert!(!process_alive(pid), "guard left s3fs {pid}");
    assert!(
        mounts_under(&dir).is_empty(),
        "guard left mounts: {:?}",
        mounts_under(&dir)
    );
    assert!(!dir.exists(), "guard did not remove {}", dir.display());
}
