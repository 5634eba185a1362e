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

/// The managed plugin (plugin/build.sh: Debian 12 rootfs, s3fs 1.90) under dockerd 26: create,
/// enable, a container's write lands in the bucket, disable refuses while a volume is in use,
/// disable and enable again keep the volume, an upgrade from a registry keeps it too. The plugin runs on dockerd 26's "host" network,
/// its own namespace here: it reaches SeaweedFS through a forwarder into that namespace.
#[test]
#[cfg_attr(
    not(bai_s3_docker),
    ignore = "needs docker, debootstrap, SeaweedFS, root"
)]
fn docker26_managed_plugin_create_enable_disable() {
    let Some(c) = case("docker26_managed_plugin_create_enable_disable") else {
        return;
    };
    const NAME: &str = "bai-s3-managed";
    let root = engine::docker26_root();
    let upstream = c.s3.endpoint.trim_start_matches("http://").to_string();
    let endpoint = engine::bridge_into_docker26(&upstream);
    // Config and state folders on dockerd 26's side of the binds: inside the root.
    let base = tempfile::Builder::new()
        .prefix("bai-s3-managed-")
        .tempdir_in(root.join("tmp"))
        .unwrap();
    let (config, state) = (base.path().join("config"), base.path().join("state"));
    for d in [&config, &state] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let mut backend = c.s3.backend("default");
    backend.endpoint = endpoint;
    support::write_private_file(
        &config.join("backends.toml"),
        &support::backends_toml(&[backend]),
    );
    let inside = |p: &std::path::Path| format!("/{}", p.strip_prefix(root).unwrap().display());

    struct Gone<'a>(&'a Engine);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let _ = self.0.cli(&["plugin", "disable", "-f", NAME]);
            let _ = self.0.cli(&["plugin", "rm", "-f", NAME]);
        }
    }
    let e = c.engine;
    let _gone = Gone(e);
    let sock = format!("unix://{}", root.join("run/docker26.sock").display());
    build_plugin(&sock, NAME, None);
    // The plugin's mount sources are the test's folders (the manifest's defaults are the
    // host's); they are set again after an upgrade.
    let set_sources_and_enable = || {
        e.ok(&[
            "plugin",
            "set",
            NAME,
            &format!("config.source={}", inside(&config)),
            &format!("state.source={}", inside(&state)),
        ]);
        e.ok(&["plugin", "enable", NAME]);
    };
    set_sources_and_enable();
    let ls = e.ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    assert!(ls.contains(&format!("{NAME}:latest true")), "{ls}");

    let bucket = c.bucket("managed");
    let vol = c.volume_name("managed");
    let b = format!("bucket={bucket}");
    let out = e.ok(&["volume", "create", "-d", NAME, "-o", &b, &vol]);
    assert_eq!(out.trim(), vol);
    let mount = format!("type=volume,src={vol},dst=/data,volume-driver={NAME}");
    let write = |what: &str| {
        let script = format!("echo {what} > /data/{what}.txt");
        let o = c.run_verb(
            "run",
            &["--rm", "--mount", &mount, IMAGE, "sh", "-c", &script],
        );
        assert!(o.status.success(), "{}", e.describe(&["run", what], &o));
        assert_eq!(
            c.object(&bucket, &format!("{what}.txt")),
            Some(format!("{what}\n").into_bytes())
        );
    };
    write("first");

    // Disable refuses while a container uses one of its volumes.
    let sleeper = c.run_verb("run", &["-d", "--mount", &mount, IMAGE, "sleep", "600"]);
    assert!(
        sleeper.status.success(),
        "{}",
        e.describe(&["run", "-d"], &sleeper)
    );
    let id = stdout_of(&sleeper).trim().to_string();
    let o = e.fails(&["plugin", "disable", NAME]);
    say(&format!("disable while in use: {}", stderr_of(&o).trim()));
    e.ok(&["rm", "-f", &id]);
    // Docker counts volumes as users of their plugin: disable needs -f while one exists.
    e.ok(&["plugin", "disable", "-f", NAME]);
    e.ok(&["plugin", "enable", NAME]);
    assert!(
        e.volume_names().contains(&vol),
        "the volume is gone after disable/enable"
    );
    write("again");

    // Upgrade as operators do: a new version pushed to a registry (on the loopback, reached
    // through a forwarder too), the plugin disabled, upgraded, enabled; the volume stays.
    let reg = docker_support::registry::Registry::start()
        .unwrap_or_else(|e| panic!("a registry for the upgrade: {e}"));
    let reg_addr = engine::bridge_into_docker26(&reg.addr);
    let v2 = format!(
        "{}/bai-s3-managed:2.0.0-e2e",
        reg_addr.trim_start_matches("http://")
    );
    build_plugin(&sock, &v2, Some("2.0.0-e2e"));
    e.ok(&["plugin", "push", &v2]);
    e.ok(&["plugin", "rm", &v2]);
    assert!(
        reg.has_tag("bai-s3-managed", "2.0.0-e2e"),
        "the push did not arrive\n{}",
        reg.log()
    );
    e.ok(&["plugin", "disable", "-f", NAME]);
    let upgraded = e.ok(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        "--skip-remote-check",
        NAME,
        &v2,
    ]);
    assert!(upgraded.contains("Upgraded plugin"), "{upgraded}");
    // As Docker 20.10 (README, Upgrades): the new version starts with the manifest's default
    // mount sources until they are set again.
    set_sources_and_enable();
    let desc = e.ok(&["plugin", "inspect", "-f", "{{.Config.Description}}", NAME]);
    assert!(
        desc.starts_with("bai-s3 2.0.0-e2e: "),
        "after the upgrade: {desc}"
    );
    assert!(
        e.volume_names().contains(&vol),
        "the volume is gone after the upgrade"
    );
    write("upgraded");
    say(&format!("upgraded to {v2}: {}", desc.trim()));

    e.ok(&["volume", "rm", &vol]);
    assert_eq!(
        c.keys(&bucket),
        vec![
            "again.txt".to_string(),
            "first.txt".to_string(),
            "upgraded.txt".to_string()
        ]
    );
}

/// `plugin/build.sh` against dockerd 26 (`sock`): the managed plugin `name` from this tree's
/// binary, with `version` in its description when given.
fn build_plugin(sock: &str, name: &str, version: Option<&str>) {
    let mut cmd = std::process::Command::new(support::repo().join("plugin/build.sh"));
    cmd.env("DOCKER_HOST", sock)
        .env("BAI_S3_PLUGIN_NAME", name)
        .env("BAI_S3_BINARY", support::daemon_bin());
    if let Some(v) = version {
        cmd.env("BAI_S3_PLUGIN_VERSION", v);
    }
    let o = docker_support::run_with_timeout(&mut cmd, std::time::Duration::from_secs(900));
    assert!(
        o.status.success(),
        "plugin/build.sh as {name} against dockerd 26: {}{}",
        stdout_of(&o),
        stderr_of(&o)
    );
}
