//! End to end under Podman 4.3 (Debian 12), which speaks the volume plugin protocol with a
//! client of its own: bai-s3 as a legacy install on the host (a `bai-s3 serve` per test), named
//! in the containers.conf the test support writes; the scenarios of
//! `tests/docker_support/engine.rs`, which every engine passes, and Podman's own timing: a cold
//! Mount must answer well inside Podman's 5 s `volume_plugin_timeout`.
//!
//! Prerequisites: root, podman and runc (scripts/deps.sh podman), busybox-static, s3fs,
//! SeaweedFS in .venv. Missing ones: SKIP, or a failure under CI=true. The tests take the lock
//! of the Docker tests' support (one engine set-up per binary).
mod docker_support;
mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use docker_support::engine::{self, Case, Engine};
use serde_json::json;
use support::say;
use support::stall::StallProxy;

static PODMAN: OnceLock<Result<Engine, String>> = OnceLock::new();

fn case(test: &str) -> Option<Case> {
    Case::start(
        test,
        &engine::podman_missing(),
        &PODMAN,
        engine::podman,
        engine::podman_daemon,
    )
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_create_ls_inspect() {
    let Some(c) = case("podman_create_ls_inspect") else {
        return;
    };
    engine::create_ls_inspect(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_container_write_lands_in_bucket() {
    let Some(c) = case("podman_container_write_lands_in_bucket") else {
        return;
    };
    engine::container_write_lands_in_bucket(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_two_containers_share_one_s3fs() {
    let Some(c) = case("podman_two_containers_share_one_s3fs") else {
        return;
    };
    engine::two_containers_share_one_s3fs(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_read_only_refuses_writes() {
    let Some(c) = case("podman_read_only_refuses_writes") else {
        return;
    };
    engine::read_only_refuses_writes(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_refused_create_leaves_nothing() {
    let Some(c) = case("podman_refused_create_leaves_nothing") else {
        return;
    };
    engine::refused_create_leaves_nothing(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_refused_mount_never_starts() {
    let Some(c) = case("podman_refused_mount_never_starts") else {
        return;
    };
    engine::refused_mount_never_starts(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_volume_rm_keeps_objects() {
    let Some(c) = case("podman_volume_rm_keeps_objects") else {
        return;
    };
    engine::volume_rm_keeps_objects(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_daemon_restart_under_running_container() {
    let Some(mut c) = case("podman_daemon_restart_under_running_container") else {
        return;
    };
    engine::daemon_restart_under_running_container(&mut c);
}

/// Podman gives a Mount 5 s (`volume_plugin_timeout`), where dockerd gives 2 min. A cold Mount
/// (no s3fs yet for the bucket) on a healthy store answers well inside it: measured on the
/// daemon's socket with Podman's own constant ID, and through `podman run`.
#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_cold_mount_well_inside_the_plugin_timeout() {
    let Some(c) = case("podman_cold_mount_well_inside_the_plugin_timeout") else {
        return;
    };
    // What Podman sends as the ID of every Mount (libpod/volume_internal_linux.go).
    const PODMAN_ID: &str = "2f73349cfc4630255319c6c8dfc1b46a8996ace9d14d8e07563b165915918ec2";
    let mut cold = Vec::new();
    for i in 0..3 {
        let bucket = c.bucket(&format!("cold{i}"));
        for k in 0..50 {
            c.s3().put(&bucket, &format!("d/f{k}"), b"x").unwrap();
        }
        let vol = c.volume_name(&format!("cold{i}"));
        c.create_volume(&vol, &[&format!("bucket={bucket}")]);
        let t0 = Instant::now();
        support::mount_ok(&c.daemon, &vol, PODMAN_ID);
        cold.push(t0.elapsed());
        support::unmount_ok(&c.daemon, &vol, PODMAN_ID);
        c.wait_unmounted();
    }
    // And through Podman: a container's start on a cold volume.
    let bucket = c.bucket("cold-run");
    let vol = c.volume_name("cold-run");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    let t0 = Instant::now();
    assert_eq!(c.sh(&vol, "echo ok"), "ok\n");
    let run = t0.elapsed();
    c.wait_unmounted();
    let worst = cold.iter().max().copied().unwrap();
    say(&format!(
        "cold Mount on the daemon's socket: {:?} ms; `podman run --rm` on a cold volume: {} ms (Podman's timeout: 5000 ms)",
        cold.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        run.as_millis()
    ));
    assert!(
        worst < Duration::from_millis(2500),
        "a cold Mount took {worst:?}: not well inside Podman's 5 s"
    );
    let st = c.status(&vol);
    assert_eq!(st["holders"], json!(0), "{st}");
}

/// A test whose daemon reaches SeaweedFS through a proxy that stalls on demand, with
/// `--mount-timeout SECS`; a prefix volume whose lookups stall, and a container created on it
/// (not started). Returns the proxy, the case (dropped before the proxy), the volume and the
/// container.
fn stalled_store(test: &str, mount_timeout: &str) -> Option<(StallProxy, Case, String, String)> {
    let s3 = support::shared_s3();
    let upstream = s3.endpoint.trim_start_matches("http://").to_string();
    let proxy = StallProxy::start(&upstream, "stallhere");
    let mut backend = s3.backend("default");
    backend.endpoint = proxy.endpoint.clone();
    let c = Case::start(
        test,
        &engine::podman_missing(),
        &PODMAN,
        engine::podman,
        |s3| engine::podman_daemon_with(s3, &[backend], &["--mount-timeout", mount_timeout]),
    )?;
    let bucket = c.bucket("slow");
    c.s3().put(&bucket, "stallhere/deep/x", b"x").unwrap();
    let vol = c.volume_name("slow");
    c.create_volume(
        &vol,
        &[&format!("bucket={bucket}"), "prefix=stallhere/deep"],
    );
    let name = c.create_container("slow", &vol, &["sleep", "600"]);
    proxy.stall(true);
    Some((proxy, c, vol, name))
}

/// `podman start NAME`, which must fail; returns how long it took and its stderr (said).
fn failed_start(c: &Case, name: &str, what: &str) -> (Duration, String) {
    let t0 = Instant::now();
    let o = c.engine.fails(&["start", name]);
    let took = t0.elapsed();
    let err = docker_support::stderr_of(&o);
    say(&format!(
        "podman start {what}, after {} ms: {}",
        took.as_millis(),
        err.trim()
    ));
    (took, err)
}

/// On a store too slow for a Mount, bai-s3's refusal reaches `podman start` and says so, within
/// Podman's 5 s: the daemon's `--mount-timeout` (3 s here) must be below Podman's
/// `volume_plugin_timeout`, or Podman gives up first with a timeout of its own (README: when to
/// raise it). Nothing is left mounted and the container never runs.
#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_slow_store_refusal_says_so_within_the_plugin_timeout() {
    let Some((proxy, c, vol, name)) = stalled_store(
        "podman_slow_store_refusal_says_so_within_the_plugin_timeout",
        "3",
    ) else {
        return;
    };
    let (took, err) = failed_start(&c, &name, "on a stalled store");
    assert!(
        err.contains("within 3 s") && err.contains("--mount-timeout"),
        "the start failed, but not with bai-s3's word on the slow store: {err}"
    );
    assert!(took < Duration::from_secs(5), "podman start took {took:?}");
    c.assert_never_started(&name);
    support::wait_nothing_mounted(
        &c.daemon,
        "after the refused Mount",
        Duration::from_secs(15),
    );
    proxy.stall(false);
    assert_eq!(c.sh(&vol, "cat /data/x"), "x");
    c.wait_unmounted();
}

/// With a `--mount-timeout` above Podman's 5 s (bai-s3's default is 20 s), a stalled store makes
/// Podman give up first with a timeout of its own, without bai-s3's word: that is when to raise
/// `volume_plugin_timeout` (README). bai-s3's refusal still lands where an operator looks
/// (`last-error` in the volume's Status), nothing is left mounted or counted, and once the store
/// answers the same container starts and its stop unmounts.
#[test]
#[cfg_attr(
    not(bai_s3_podman),
    ignore = "needs podman, runc, s3fs, SeaweedFS, root"
)]
fn podman_gives_up_before_a_longer_mount_timeout() {
    let Some((proxy, c, vol, name)) =
        stalled_store("podman_gives_up_before_a_longer_mount_timeout", "8")
    else {
        return;
    };
    let (took, err) = failed_start(&c, &name, "on a stalled store, --mount-timeout 8");
    assert!(
        err.contains("Client.Timeout exceeded"),
        "Podman did not give up on its own timeout: {err}"
    );
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
        "podman start took {took:?}"
    );
    // bai-s3 gives up at its own deadline and says why in the Status.
    let st = support::wait_for(
        "bai-s3's refusal in the volume's Status",
        Duration::from_secs(20),
        || {
            let st = c.status(&vol);
            st["last-error"]
                .as_str()
                .is_some_and(|e| e.contains("--mount-timeout"))
                .then_some(st)
        },
    );
    assert_eq!(st["holders"], json!(0), "{st}");
    support::wait_nothing_mounted(
        &c.daemon,
        "after the given-up Mount",
        Duration::from_secs(15),
    );
    let raw = c.engine.ok(&["volume", "inspect", &vol]);
    assert!(raw.contains("last-error"), "podman volume inspect: {raw}");

    proxy.stall(false);
    c.engine.ok(&["start", &name]);
    assert_eq!(c.exec(&name, "cat /data/x"), "x");
    assert_eq!(c.status(&vol)["holders"], json!(1));
    c.engine.ok(&["stop", "-t", "1", &name]);
    c.wait_unmounted();
    assert_eq!(c.status(&vol)["holders"], json!(0));
}
