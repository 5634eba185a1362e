//! The Prometheus endpoint (`--metrics-addr`) of the real `bai-s3 serve`, scraped over TCP with
//! a plain HTTP client while real s3fs mounts of a real SeaweedFS come and go. Every scrape must
//! pass `promtool check metrics` and must not contain the secret key.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// `promtool` on PATH (scripts/deps.sh metrics installs it): under CI=true its absence fails.
fn promtool_present(test: &str) -> bool {
    let missing = (!on_path("promtool")).then(|| {
        "promtool is not on PATH (scripts/deps.sh metrics installs Debian's prometheus)".to_string()
    });
    require(test, missing.as_slice())
}

/// The metrics port of the daemon's current run, from its last "metrics listening" log line
/// (the daemon is started with port 0 so that it picks a free one itself).
fn metrics_port(d: &Daemon) -> u16 {
    wait_for(
        "the metrics listener's log line",
        Duration::from_secs(10),
        || {
            let logs = d.logs();
            let run = logs.rsplit("starting bai-s3 serve").next()?.to_string();
            let line = run.lines().find(|l| l.contains("metrics listening"))?;
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            addr.rsplit(':').next()?.parse().ok()
        },
    )
}

/// One plain HTTP/1.1 request; returns status, headers and body.
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).expect("reply is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("reply has headers");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Scrape, check the body with promtool and make sure no secret is in it.
fn scrape(port: u16, secrets: &[&str]) -> String {
    let (status, head, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics: {head}\n{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "not the Prometheus text format: {head}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}): {}{}\n--- body ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in secrets {
        assert!(!body.contains(s), "a secret is in the metrics:\n{body}");
    }
    body
}

/// The value of one series, written exactly as it appears (`name{label="v",...}`).
fn value(body: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not in:\n{body}"))
}

fn calls(body: &str, endpoint: &str, outcome: &str) -> f64 {
    let series = format!(
        "bai_s3_call_duration_seconds_count{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"
    );
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// The gauges that follow the volumes, in one tuple for readable assertions:
/// (volumes, holders, mounts ok, mounts stale, s3fs processes).
fn gauges(body: &str) -> (f64, f64, f64, f64, f64) {
    (
        value(body, "bai_s3_volumes"),
        value(body, "bai_s3_holders"),
        value(body, "bai_s3_mounts{health=\"ok\"}"),
        value(body, "bai_s3_mounts{health=\"stale\"}"),
        value(body, "bai_s3_s3fs_processes"),
    )
}

fn failures(body: &str, cause: &str) -> f64 {
    value(
        body,
        &format!("bai_s3_mount_failures_total{{cause=\"{cause}\"}}"),
    )
}

/// Scrape until `want` holds of the gauges (they follow s3fs processes that take a moment to
/// exit or to be seen dead).
fn scrape_until(
    d: &Daemon,
    port: u16,
    secrets: &[&str],
    what: &str,
    want: impl Fn(&(f64, f64, f64, f64, f64)) -> bool,
) -> String {
    let mut last = String::new();
    let got = poll(Duration::from_secs(15), || {
        last = scrape(port, secrets);
        want(&gauges(&last)).then(|| last.clone())
    });
    got.unwrap_or_else(|| {
        panic!(
            "metrics never showed {what}; last gauges {:?}\n{last}\n{}",
            gauges(&last),
            d.logs_tail(40)
        )
    })
}

#[test]
#[cfg_attr(
    not(all(bai_s3_integration, bai_s3_promtool)),
    ignore = "needs root, FUSE, s3fs, SeaweedFS, promtool"
)]
fn metrics_follow_mounts_failures_repairs_and_adoptions() {
    let test = "metrics_follow_mounts_failures_repairs_and_adoptions";
    if !promtool_present(test) {
        return;
    }
    let Some((s3, mut d)) = setup_with(
        test,
        &["--metrics-addr", "127.0.0.1:0", "--health-interval", "3600"],
    ) else {
        return;
    };
    let secret = s3.secret_key.clone();
    let secrets = [secret.as_str()];
    let port = metrics_port(&d);

    // Only GET (and HEAD) of /metrics.
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    assert_eq!(http(port, "GET", "/").0, 404);

    let body = scrape(port, &secrets);
    assert_eq!(gauges(&body), (0.0, 0.0, 0.0, 0.0, 0.0));
    assert_eq!(value(&body, "bai_s3_s3fs_resident_memory_bytes"), 0.0);
    assert_eq!(value(&body, "bai_s3_repairs_total"), 0.0);
    assert_eq!(value(&body, "bai_s3_adoptions_total"), 0.0);
    for cause in [
        "backend", "s3fs", "timeout", "prefix", "system", "state", "other",
    ] {
        assert_eq!(failures(&body, cause), 0.0, "cause {cause}");
    }
    assert!(body.contains("bai_s3_build_info{version=\""), "{body}");

    // Two prefix volumes of one bucket (one shared s3fs) and one on a second backend.
    let bucket = new_bucket(s3, "metrics");
    d.write_backends(&[s3.backend("default"), s3.backend("other")]);
    let (a, b, c) = (
        unique_name("metrics-a"),
        unique_name("metrics-b"),
        unique_name("metrics-c"),
    );
    create_ok(&d, &a, &[("bucket", &bucket), ("prefix", "a")]);
    create_ok(&d, &b, &[("bucket", &bucket), ("prefix", "b")]);
    create_ok(&d, &c, &[("bucket", &bucket), ("backend", "other")]);
    let body = scrape(port, &secrets);
    assert_eq!(gauges(&body), (3.0, 0.0, 0.0, 0.0, 0.0));
    assert_eq!(calls(&body, "VolumeDriver.Create", "ok"), 3.0);

    let (id1, id2) = (new_id(), new_id());
    mount_ok(&d, &a, &id1);
    mount_ok(&d, &b, &id2);
    mount_ok(&d, &a, &id1); // docker cp: the same ID again
    let body = scrape(port, &secrets);
    assert_eq!(gauges(&body), (3.0, 3.0, 2.0, 0.0, 1.0));
    assert_eq!(calls(&body, "VolumeDriver.Mount", "ok"), 3.0);
    let rss = value(&body, "bai_s3_s3fs_resident_memory_bytes");
    assert!(rss >= 1024.0 * 1024.0, "s3fs resident memory {rss} bytes");
    // No volume names as labels: the series do not grow with the volumes.
    assert!(!body.contains(&a) && !body.contains(&bucket), "{body}");

    // A Mount with a wrong secret key fails in s3fs (cause "s3fs"); one whose backend has
    // left the backends file fails with cause "backend"; a request to an unknown path counts
    // as endpoint "other", whatever the path says.
    let wrong = format!("WRONG{}", random_hex(16));
    let mut bad = s3.backend("other");
    bad.secret_key = wrong.clone();
    d.write_backends(&[s3.backend("default"), bad]);
    let secrets = [secret.as_str(), wrong.as_str()];
    let err = d
        .mount(&c, &new_id())
        .expect_err("Mount with a wrong secret key");
    assert!(err.contains("s3fs"), "{err}");
    let body = scrape(port, &secrets);
    assert_eq!(failures(&body, "s3fs"), 1.0, "{err}");
    d.write_backends(&[s3.backend("default")]);
    let err = d
        .mount(&c, &new_id())
        .expect_err("Mount on a removed backend");
    assert!(err.contains("not configured"), "{err}");
    let (st, _) = d.call(
        &format!("VolumeDriver.Mount{secret}"),
        &serde_json::json!({}),
    );
    assert_eq!(st, 404);
    let body = scrape(port, &secrets);
    assert_eq!(failures(&body, "backend"), 1.0);
    assert_eq!(failures(&body, "s3fs"), 1.0);
    assert_eq!(failures(&body, "timeout"), 0.0);
    assert_eq!(calls(&body, "VolumeDriver.Mount", "error"), 2.0);
    assert_eq!(calls(&body, "other", "error"), 1.0);
    assert_eq!(gauges(&body), (3.0, 3.0, 2.0, 0.0, 1.0));

    // A read-only volume whose prefix is missing fails with cause "prefix", not "system".
    let r = unique_name("metrics-ro");
    create_ok(
        &d,
        &r,
        &[("bucket", &bucket), ("prefix", "none"), ("ro", "true")],
    );
    let err = d
        .mount(&r, &new_id())
        .expect_err("Mount of a missing ro prefix");
    assert!(err.contains("never creates it"), "{err}");
    d.remove(&r).unwrap();
    let body = scrape(port, &secrets);
    assert_eq!(failures(&body, "prefix"), 1.0, "{err}");
    assert_eq!(failures(&body, "system"), 0.0, "{err}");
    assert_eq!(gauges(&body), (3.0, 3.0, 2.0, 0.0, 1.0));

    // The shared s3fs dies: both mounts are stale at once; each next Mount repairs one.
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    sigkill(pids[0]).unwrap();
    scrape_until(&d, port, &secrets, "two stale mounts and no s3fs", |g| {
        (g.2, g.3, g.4) == (0.0, 2.0, 0.0)
    });
    let (id3, id4) = (new_id(), new_id());
    mount_ok(&d, &b, &id3);
    let body = scrape(port, &secrets);
    assert_eq!(value(&body, "bai_s3_repairs_total"), 1.0);
    assert_eq!(gauges(&body), (3.0, 4.0, 1.0, 1.0, 1.0));
    mount_ok(&d, &a, &id4);
    let body = scrape(port, &secrets);
    assert_eq!(value(&body, "bai_s3_repairs_total"), 2.0);
    assert_eq!(gauges(&body), (3.0, 5.0, 2.0, 0.0, 1.0));

    // A daemon killed and started again adopts both live mounts (counters start afresh).
    d.kill9();
    d.restart();
    let port = metrics_port(&d);
    let body = scrape_until(&d, port, &secrets, "both mounts adopted", |g| g.2 == 2.0);
    assert_eq!(value(&body, "bai_s3_adoptions_total"), 2.0);
    assert_eq!(value(&body, "bai_s3_repairs_total"), 0.0);
    assert_eq!(gauges(&body), (3.0, 5.0, 2.0, 0.0, 1.0));

    // Every holder leaves: nothing mounted, no s3fs; Remove empties the table.
    for (vol, id) in [(&a, &id1), (&a, &id1), (&a, &id4), (&b, &id2), (&b, &id3)] {
        unmount_ok(&d, vol, id);
    }
    scrape_until(&d, port, &secrets, "no mount and no s3fs", |g| {
        *g == (3.0, 0.0, 0.0, 0.0, 0.0)
    });
    for v in [&a, &b, &c] {
        d.remove(v)
            .unwrap_or_else(|e| panic!("Remove {v}: {e}\n{}", d.logs_tail(40)));
    }
    let body = scrape(port, &secrets);
    assert_eq!(gauges(&body), (0.0, 0.0, 0.0, 0.0, 0.0));
    assert_eq!(value(&body, "bai_s3_s3fs_resident_memory_bytes"), 0.0);
    assert_eq!(calls(&body, "VolumeDriver.Unmount", "ok"), 5.0);
    assert_eq!(calls(&body, "VolumeDriver.Remove", "ok"), 3.0);
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn metrics_are_off_by_default_and_a_bad_address_is_refused() {
    let test = "metrics_are_off_by_default_and_a_bad_address_is_refused";
    let Some((_s3, mut d)) = setup(test) else {
        return;
    };
    assert!(
        !d.logs().contains("metrics listening"),
        "metrics on without --metrics-addr:\n{}",
        d.logs_tail(20)
    );
    d.stop();
    let out = Command::new(daemon_bin())
        .args(["serve", "--metrics-addr", "localhost"])
        .arg("--socket")
        .arg(d.dir.join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains("127.0.0.1:9108"),
        "{err}"
    );

    // A port that is taken is an error at start-up, not a daemon without its metrics.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = serve_command(
        &d.dir.join("other.sock"),
        &d.state_dir,
        &d.mount_root,
        &d.config,
    )
    .args(["--metrics-addr", &addr])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
    assert!(!d.dir.join("other.sock").exists());
}

#[test]
#[cfg_attr(
    not(all(bai_s3_integration, bai_s3_promtool)),
    ignore = "needs root, FUSE, s3fs, SeaweedFS, promtool"
)]
fn the_health_check_counts_its_repairs() {
    let test = "the_health_check_counts_its_repairs";
    if !promtool_present(test) {
        return;
    }
    let Some((s3, d)) = setup_with(
        test,
        &["--metrics-addr", "127.0.0.1:0", "--health-interval", "1"],
    ) else {
        return;
    };
    let secrets = [s3.secret_key.as_str()];
    let port = metrics_port(&d);
    let bucket = new_bucket(s3, "metrics-hc");
    let vol = unique_name("metrics-hc");
    create_ok(&d, &vol, &[("bucket", &bucket)]);
    let id = new_id();
    mount_ok(&d, &vol, &id);
    let pids = d.s3fs_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    sigkill(pids[0]).unwrap();
    // No Mount comes: only the periodic check can mount it again.
    let repaired = poll(Duration::from_secs(15), || {
        let body = scrape(port, &secrets);
        (value(&body, "bai_s3_repairs_total") == 1.0).then_some(())
    });
    assert!(repaired.is_some(), "no repair counted\n{}", d.logs_tail(40));
    scrape_until(&d, port, &secrets, "the repaired mount ok", |g| {
        (g.2, g.3, g.4) == (1.0, 0.0, 1.0)
    });
    assert_eq!(d.s3fs_pids().len(), 1);
    assert!(!d.s3fs_pids().contains(&pids[0]));
    unmount_ok(&d, &vol, &id);
    scrape_until(&d, port, &secrets, "nothing mounted", |g| {
        *g == (1.0, 0.0, 0.0, 0.0, 0.0)
    });
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(
    not(all(bai_s3_integration, bai_s3_promtool)),
    ignore = "needs root, FUSE, s3fs, SeaweedFS, promtool"
)]
fn max_mounts_refuses_a_third_bucket_but_not_a_join_and_shows_the_limit() {
    let test = "max_mounts_refuses_a_third_bucket_but_not_a_join_and_shows_the_limit";
    if !promtool_present(test) {
        return;
    }
    let Some((s3, d)) = setup_with(
        test,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-interval",
            "3600",
            "--max-mounts",
            "2",
        ],
    ) else {
        return;
    };
    let secrets = [s3.secret_key.as_str()];
    let port = metrics_port(&d);
    let body = scrape(port, &secrets);
    assert_eq!(value(&body, "bai_s3_max_mounts"), 2.0);
    assert_eq!(failures(&body, "limit"), 0.0);
    let warning = "90 % of --max-mounts";
    let warnings = || d.logs().matches(warning).count();

    let buckets = [
        new_bucket(s3, "limit-a"),
        new_bucket(s3, "limit-b"),
        new_bucket(s3, "limit-c"),
    ];
    let vols = [
        unique_name("limit-a"),
        unique_name("limit-b"),
        unique_name("limit-c"),
    ];
    for (v, b) in vols.iter().zip(&buckets) {
        create_ok(&d, v, &[("bucket", b)]);
    }
    let a2 = unique_name("limit-a2");
    create_ok(&d, &a2, &[("bucket", &buckets[0]), ("prefix", "two")]);
    let ids = [new_id(), new_id(), new_id(), new_id()];
    mount_ok(&d, &vols[0], &ids[0]);
    assert_eq!(warnings(), 0, "{}", d.logs_tail(20));
    mount_ok(&d, &vols[1], &ids[1]);
    // Two of two: at 90 %, said once.
    assert_eq!(warnings(), 1, "{}", d.logs_tail(20));

    // The third bucket would need a third s3fs: refused with the limit, the count and the
    // setting, and nothing of it is left.
    let err = d
        .mount(&vols[2], &ids[2])
        .expect_err("a Mount over --max-mounts");
    for word in [
        buckets[2].as_str(),
        "2 of at most 2",
        "--max-mounts",
        "BAI_S3_MAX_MOUNTS",
    ] {
        assert!(err.contains(word), "{word:?} not in: {err}");
    }
    assert_eq!(d.s3fs_pids().len(), 2, "{:?}", d.s3fs_pids());
    assert!(!d.mountpoint_of(&vols[2]).exists());
    assert!(
        !d.mounts()
            .iter()
            .any(|m| m.mount_point.to_string_lossy().contains(&buckets[2])),
        "{:?}",
        d.mounts()
    );
    let st = status(&d, &vols[2]);
    assert_eq!((holders(&st), mounted(&st)), (0, false), "{st}");
    let body = scrape(port, &secrets);
    assert_eq!(failures(&body, "limit"), 1.0);
    assert_eq!(gauges(&body), (4.0, 2.0, 2.0, 0.0, 2.0));
    assert_eq!(warnings(), 1, "warned again without a crossing");

    // Another volume of a mounted bucket joins its s3fs: never limited.
    let mp = mount_ok(&d, &a2, &ids[3]);
    std::fs::write(mp.join("f"), b"joined").unwrap();
    assert_eq!(d.s3fs_pids().len(), 2);

    // A bucket's last volume leaves: the third bucket mounts, and 90 % is crossed again.
    unmount_ok(&d, &vols[1], &ids[1]);
    let freed = poll(Duration::from_secs(10), || {
        (d.s3fs_pids().len() == 1).then_some(())
    });
    assert!(freed.is_some(), "{:?}", d.s3fs_pids());
    let mp = mount_ok(&d, &vols[2], &ids[2]);
    std::fs::write(mp.join("f"), b"third").unwrap();
    assert_eq!(d.s3fs_pids().len(), 2);
    assert_eq!(warnings(), 2, "{}", d.logs_tail(20));
    let body = scrape(port, &secrets);
    assert_eq!(failures(&body, "limit"), 1.0);
    assert_eq!(value(&body, "bai_s3_max_mounts"), 2.0);

    for (v, id) in [(&vols[0], &ids[0]), (&a2, &ids[3]), (&vols[2], &ids[2])] {
        unmount_ok(&d, v, id);
    }
    wait_all_unmounted(&d);
    for v in vols.iter().chain([&a2]) {
        d.remove(v).unwrap();
    }
}
