//! End to end under Docker Engine 26 (Debian 13's docker.io), run by the test support from a
//! Debian 13 root (scripts/trixie-root.sh makes it once and the machine keeps it): bai-s3 as a
//! legacy plugin run inside that root with its s3fs 1.95; the scenarios of
//! `tests/docker_support/engine.rs`, which every engine passes, and Docker 26's
//! `volume-subpath` on a bai-s3 volume, with a symlink planted as the sub-path.
//!
//! Prerequisites: root, the docker CLI, debootstrap (scripts/deps.sh docker), busybox-static,
//! SeaweedFS in .venv; the package registry for a first build of the root. Missing ones: SKIP,
//! or a failure under CI=true. The tests take the lock of the Docker tests' support.
mod docker_support;
mod support;

use std::sync::OnceLock;

use docker_support::engine::{self, Case, Engine};
use docker_support::{stderr_of, stdout_of, IMAGE};
use support::say;

static D26: OnceLock<Result<Engine, String>> = OnceLock::new();

fn case(test: &str) -> Option<Case> {
    Case::start(
        test,
        &engine::docker26_missing(),
        &D26,
        engine::docker26,
        engine::docker26_daemon,
    )
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_create_ls_inspect() {
    let Some(c) = case("docker26_create_ls_inspect") else {
        return;
    };
    engine::create_ls_inspect(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_container_write_lands_in_bucket() {
    let Some(c) = case("docker26_container_write_lands_in_bucket") else {
        return;
    };
    engine::container_write_lands_in_bucket(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_two_containers_share_one_s3fs() {
    let Some(c) = case("docker26_two_containers_share_one_s3fs") else {
        return;
    };
    engine::two_containers_share_one_s3fs(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_read_only_refuses_writes() {
    let Some(c) = case("docker26_read_only_refuses_writes") else {
        return;
    };
    engine::read_only_refuses_writes(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_refused_create_leaves_nothing() {
    let Some(c) = case("docker26_refused_create_leaves_nothing") else {
        return;
    };
    engine::refused_create_leaves_nothing(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_refused_mount_never_starts() {
    let Some(c) = case("docker26_refused_mount_never_starts") else {
        return;
    };
    engine::refused_mount_never_starts(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_volume_rm_keeps_objects() {
    let Some(c) = case("docker26_volume_rm_keeps_objects") else {
        return;
    };
    engine::volume_rm_keeps_objects(&c);
}

#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_daemon_restart_under_running_container() {
    let Some(mut c) = case("docker26_daemon_restart_under_running_container") else {
        return;
    };
    engine::daemon_restart_under_running_container(&mut c);
}

/// Docker 26's `--mount type=volume,...,volume-subpath=DIR`: a folder of a bucket volume is
/// what the container sees. A symlink planted as DIR by another container (`ln -s / evil`) is
/// not followed out of the volume: dockerd refuses the mount, and the host is never reached.
#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_volume_subpath_and_a_planted_symlink() {
    let Some(c) = case("docker26_volume_subpath_and_a_planted_symlink") else {
        return;
    };
    let bucket = c.bucket("subpath");
    c.s3().put(&bucket, "sub/a.txt", b"a\n").unwrap();
    c.s3().put(&bucket, "top.txt", b"top\n").unwrap();
    let vol = c.volume_name("subpath");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    let sub = |dir: &str| format!("type=volume,src={vol},dst=/data,volume-subpath={dir}");

    let o = c.run_verb(
        "run",
        &[
            "--rm",
            "--mount",
            &sub("sub"),
            IMAGE,
            "sh",
            "-c",
            "ls /data; cat /data/a.txt; echo b > /data/b.txt",
        ],
    );
    assert!(
        o.status.success(),
        "{}",
        c.engine.describe(&["run", "volume-subpath=sub"], &o)
    );
    assert_eq!(
        stdout_of(&o),
        "a.txt\na\n",
        "volume-subpath=sub shows the folder"
    );
    assert_eq!(c.object(&bucket, "sub/b.txt").as_deref(), Some(&b"b\n"[..]));
    c.wait_unmounted();

    // A container plants a symlink to / in the bucket; another mounts it as the sub-path.
    c.sh(&vol, "ln -s / /data/evil && ls -l /data/evil");
    let o = c.run_verb(
        "run",
        &[
            "--rm",
            "--mount",
            &sub("evil"),
            IMAGE,
            "sh",
            "-c",
            "ls /data; test -e /data/work && echo HOST-REACHED",
        ],
    );
    say(&format!(
        "volume-subpath=evil (a symlink to /): {} / {} / {}",
        o.status,
        stdout_of(&o).trim(),
        stderr_of(&o).trim()
    ));
    assert!(
        !stdout_of(&o).contains("HOST-REACHED"),
        "volume-subpath followed a planted symlink to the host's /"
    );
    assert!(
        !o.status.success(),
        "dockerd 26 mounted a symlink as the sub-path: {}",
        stdout_of(&o)
    );
    c.wait_unmounted();
}
