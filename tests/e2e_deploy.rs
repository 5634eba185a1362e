//! Deployment end to end, against a real Docker engine: the plugin pushed to a real registry on
//! the loopback, installed from it and upgraded as operators do it; and the Python client kit
//! for Backend.AI (`clients/python`), whose pytest suite runs here against the managed plugin.
//!
//! Shares `tests/docker_support` with `e2e_docker.rs`: the `bai-s3` plugin built from this
//! tree, SeaweedFS, the busybox image, the global lock. The plugin installed from the registry
//! is called `bai-s3-reg` (`--alias`), so it never takes the name the other tests use.
mod docker_support;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use docker_support::registry::Registry;
use docker_support::*;
use serde_json::{json, Value};
use support::{poll, say, wait_for};

/// The alias of the plugin installed from the registry.
const REG_PLUGIN: &str = "bai-s3-reg";
/// Repository of the plugin in the registry.
const REPO: &str = "bai-s3";

fn object(t: &E2e, bucket: &str, key: &str) -> Option<Vec<u8>> {
    t.s3()
        .get(bucket, key)
        .unwrap_or_else(|e| panic!("S3 get {bucket}/{key}: {e}"))
}

/// Removes a plugin this file installed (and its volumes) when dropped, and one a crashed
/// earlier run left when made.
struct InstalledPlugin {
    name: &'static str,
}

impl InstalledPlugin {
    fn clear(name: &str) {
        if !docker(&["plugin", "inspect", name]).status.success() {
            return;
        }
        let vols = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("driver={name}:latest"),
        ]);
        for v in stdout_of(&vols)
            .lines()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            remove_volume(v);
        }
        let _ = docker(&["plugin", "disable", "-f", name]);
        let _ = docker(&["plugin", "rm", "-f", name]);
    }

    fn new(name: &'static str) -> InstalledPlugin {
        InstalledPlugin::clear(name);
        // Local builds of an earlier run that stopped between build and push.
        let ls = docker_ok(&["plugin", "ls", "--format", "{{.Name}}"]);
        for p in ls.lines().map(str::trim) {
            if p.starts_with("127.0.0.1:")
                && p.contains(&format!("/{REPO}:"))
                && p.ends_with("-e2e")
            {
                let _ = docker(&["plugin", "rm", "-f", p]);
            }
        }
        InstalledPlugin { name }
    }
}

impl Drop for InstalledPlugin {
    fn drop(&mut self) {
        InstalledPlugin::clear(self.name);
    }
}

/// A private root-only folder (the installed plugin's state, apart from the `bai-s3` plugin's).
fn private_dir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("bai-s3-e2e-{tag}-"))
        .tempdir()
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// `plugin/build.sh` as `name` with version `version` (a second plugin next to `bai-s3`),
/// then `docker plugin push` and `rm`: what `make plugin-push` does.
fn build_and_push(reg: &Registry, version: &str) -> String {
    let reference = reg.reference(REPO, version);
    let o = run_with_timeout(
        Command::new(support::repo().join("plugin/build.sh"))
            .current_dir(support::repo())
            .env("BAI_S3_PLUGIN_NAME", &reference)
            .env("BAI_S3_PLUGIN_VERSION", version)
            .env(
                "BAI_S3_BINARY",
                support::repo().join("target/release/bai-s3"),
            ),
        Duration::from_secs(900),
    );
    assert!(
        o.status.success(),
        "plugin/build.sh as {reference}: {}\n{}",
        stdout_of(&o),
        stderr_of(&o)
    );
    let t0 = std::time::Instant::now();
    docker_ok(&["plugin", "push", &reference]);
    say(&format!(
        "e2e: pushed {reference} in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    // The local copy goes first, so that a failure below leaves nothing behind.
    docker_ok(&["plugin", "rm", &reference]);
    assert!(
        reg.has_tag(REPO, version),
        "the registry has no manifest for {REPO}:{version} after the push\n{}",
        reg.log()
    );
    reference
}

fn plugin_field(name: &str, field: &str) -> String {
    docker_ok(&["plugin", "inspect", "-f", field, name])
        .trim()
        .to_string()
}

/// What `sh -c SCRIPT` in running container `c` answers: (exit code, stdout, stderr).
fn exec_sh(c: &str, script: &str) -> (i32, String, String) {
    let o = docker(&["exec", c, "sh", "-c", script]);
    (o.status.code().unwrap_or(-1), stdout_of(&o), stderr_of(&o))
}

/// 1. `docker plugin install` from a registry with settings on the command line, a container
///    on a volume of it; then `docker plugin upgrade` to a second build: volumes and options
///    are still there, a container started after the upgrade reads what one wrote before, and
///    what a container that kept running through the upgrade sees is written down.
#[test]
#[cfg_attr(not(bai_s3_docker), ignore = "needs dockerd, debootstrap, SeaweedFS")]
fn registry_install_and_upgrade() {
    let Some(t) = e2e("registry_install_and_upgrade") else {
        return;
    };
    let reg = match Registry::start() {
        Ok(r) => r,
        Err(e) => {
            if support::in_ci() {
                panic!("registry_install_and_upgrade: no registry under CI=true: {e}");
            }
            say(&format!("SKIP registry_install_and_upgrade: {e}"));
            return;
        }
    };
    say(&format!("e2e: docker-registry on {}", reg.addr));
    let guard = InstalledPlugin::new(REG_PLUGIN);
    let v1 = build_and_push(&reg, "1.0.0-e2e");
    let v2 = build_and_push(&reg, "2.0.0-e2e");
    assert!(
        !docker(&["plugin", "inspect", &v1]).status.success(),
        "{v1} is still there locally: the install below would not come from the registry"
    );

    // Install as an operator does on every host, settings on the command line.
    let state = private_dir("reg-state");
    let config = t.env.config_dir.display().to_string();
    let t0 = std::time::Instant::now();
    docker_ok(&[
        "plugin",
        "install",
        "--alias",
        REG_PLUGIN,
        "--grant-all-permissions",
        &v1,
        "BAI_S3_UNMOUNT_DELAY=5",
        &format!("config.source={config}"),
        &format!("state.source={}", state.path().display()),
    ]);
    say(&format!(
        "e2e: docker plugin install {v1} in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    assert_eq!(plugin_field(REG_PLUGIN, "{{.Enabled}}"), "true");
    assert_eq!(plugin_field(REG_PLUGIN, "{{.PluginReference}}"), v1);
    assert!(
        plugin_field(REG_PLUGIN, "{{.Config.Description}}").starts_with("bai-s3 1.0.0-e2e: "),
        "{}",
        plugin_field(REG_PLUGIN, "{{.Config.Description}}")
    );
    let settings = plugin_field(REG_PLUGIN, "{{json .Settings}}");
    assert!(
        settings.contains("BAI_S3_UNMOUNT_DELAY=5"),
        "install did not apply the setting: {settings}"
    );
    let id = plugin_field(REG_PLUGIN, "{{.Id}}");
    let propagated = PathBuf::from(format!("/var/lib/docker/plugins/{id}/propagated-mount"));

    let bucket = t.bucket("registry");
    t.s3().put(&bucket, "sub/seed.txt", b"seed\n").unwrap();
    let vol = t.volume_name("reg");
    let sub = t.volume_name("reg-sub");
    let mount = |v: &str| format!("type=volume,src={v},dst=/data,volume-driver={REG_PLUGIN}");
    for (v, opts) in [
        (&vol, vec![format!("bucket={bucket}"), "uid=1000".into()]),
        (
            &sub,
            vec![
                format!("bucket={bucket}"),
                "prefix=sub".into(),
                "ro=true".into(),
            ],
        ),
    ] {
        let mut args = vec!["volume", "create", "-d", REG_PLUGIN];
        for o in &opts {
            args.extend(["-o", o.as_str()]);
        }
        args.push(v);
        docker_ok(&args);
    }
    assert_eq!(
        volume_inspect(&vol)["Driver"],
        json!(format!("{REG_PLUGIN}:latest"))
    );
    let out = t.run_sh(
        &mount(&vol),
        "echo v1 > /data/v1.txt; stat -c %u /data/v1.txt",
    );
    assert_eq!(out, "1000\n");
    assert_eq!(object(&t, &bucket, "v1.txt").as_deref(), Some(&b"v1\n"[..]));
    // BAI_S3_UNMOUNT_DELAY=5 from the command line is in effect: the volume stays mounted a
    // while after its last container, then goes.
    let st = t.status(&vol);
    assert_eq!(
        st["mounted"],
        json!(true),
        "unmounted at once although BAI_S3_UNMOUNT_DELAY=5: {st}"
    );
    wait_for(
        "the delayed unmount after BAI_S3_UNMOUNT_DELAY=5",
        Duration::from_secs(30),
        || (t.status(&vol)["mounted"] == json!(false)).then_some(()),
    );
    say("installed from the registry: container wrote v1.txt; unmount delayed, then done");

    // A container that keeps running through the upgrade.
    let runner = t.start_sleeper("reg-runner", &mount(&vol));
    docker_ok(&[
        "exec",
        &runner,
        "sh",
        "-c",
        "echo before > /data/before.txt",
    ]);
    let before_opts: Vec<Value> = [&vol, &sub].iter().map(|v| t.status(v)).collect();

    // Docker refuses to disable a plugin whose volumes exist; upgrade needs it disabled.
    let o = docker_fails(&["plugin", "disable", REG_PLUGIN]);
    say(&format!(
        "docker plugin disable (volumes exist, one in use): {}",
        stderr_of(&o).trim()
    ));
    assert!(
        stderr_of(&o).contains("in use"),
        "disable refused for another reason: {}",
        stderr_of(&o)
    );
    let o = docker_fails(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        REG_PLUGIN,
        &v2,
    ]);
    say(&format!(
        "docker plugin upgrade while enabled: {}",
        stderr_of(&o).trim()
    ));

    docker_ok(&["plugin", "disable", "-f", REG_PLUGIN]);
    // What the running container sees while the plugin is down.
    let (code, out, err) = exec_sh(&runner, "cat /data/before.txt; ls /data");
    say(&format!(
        "running container, plugin disabled: exit {code}, out {:?}, err {:?}",
        out.trim(),
        err.trim()
    ));
    assert!(
        code != 0 && err.contains("Transport endpoint is not connected"),
        "with the plugin disabled the container's volume answers otherwise than the README \
         says: exit {code}, {out} {err}"
    );
    assert!(
        support::mounts_under(&propagated).is_empty(),
        "mounts left under the disabled plugin's propagated mount: {:?}",
        support::mounts_under(&propagated)
    );
    assert!(
        t.s3fs_for_bucket(&bucket).is_empty(),
        "an s3fs of the disabled plugin is still alive"
    );

    let t0 = std::time::Instant::now();
    // With --alias the CLI compares the remote with the alias, asks "Plugin images do not
    // match, are you sure?" and, with no terminal to answer, upgrades nothing and exits 0.
    let upgraded = docker_ok(&[
        "plugin",
        "upgrade",
        "--skip-remote-check",
        "--grant-all-permissions",
        REG_PLUGIN,
        &v2,
    ]);
    // Docker 20.10 keeps the mount settings in `docker plugin inspect` across the upgrade but
    // starts the new version with the manifest's default sources (an empty state, no backends
    // file: every volume gone from `docker volume ls`) until they are set again.
    docker_ok(&[
        "plugin",
        "set",
        REG_PLUGIN,
        &format!("config.source={config}"),
        &format!("state.source={}", state.path().display()),
    ]);
    docker_ok(&["plugin", "enable", REG_PLUGIN]);
    say(&format!(
        "e2e: upgrade to {v2} and enable in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    assert!(
        upgraded.contains("Upgraded plugin"),
        "docker plugin upgrade did not upgrade: {upgraded}"
    );
    assert_eq!(plugin_field(REG_PLUGIN, "{{.PluginReference}}"), v2);
    assert!(
        plugin_field(REG_PLUGIN, "{{.Config.Description}}").starts_with("bai-s3 2.0.0-e2e: "),
        "{}",
        plugin_field(REG_PLUGIN, "{{.Config.Description}}")
    );
    let settings = plugin_field(REG_PLUGIN, "{{json .Settings}}");
    assert!(
        settings.contains("BAI_S3_UNMOUNT_DELAY=5") && settings.contains(&config),
        "the upgrade lost settings: {settings}"
    );

    // The volumes and their options are there.
    let names = t.volume_names();
    let reg_log = || {
        let l = plugin_log_lines(&id);
        l[l.len().saturating_sub(25)..].join("\n")
    };
    assert!(
        names.contains(&vol) && names.contains(&sub),
        "volumes after the upgrade: {names:?}\nsettings: {settings}\n--- {REG_PLUGIN} log ---\n{}",
        reg_log()
    );
    for (v, before) in [&vol, &sub].iter().zip(&before_opts) {
        let now = t.status(v);
        for k in ["backend", "bucket", "prefix", "ro", "uid", "gid", "umask"] {
            assert_eq!(
                now.get(k),
                before.get(k),
                "{v} {k} after the upgrade: {now}"
            );
        }
    }

    // The container that ran through it: what it sees now, and after a restart.
    let (code, out, err) = exec_sh(&runner, "cat /data/before.txt");
    say(&format!(
        "running container after the upgrade: exit {code}, out {:?}, err {:?}",
        out.trim(),
        err.trim()
    ));
    assert!(
        code != 0 && err.contains("Transport endpoint is not connected"),
        "the old container's mount after the upgrade is not as the README says: exit {code}, \
         {out} {err}"
    );
    docker_ok(&["restart", "-t", "1", &runner]);
    assert_eq!(
        docker_ok(&["exec", &runner, "cat", "/data/before.txt"]),
        "before\n"
    );
    docker_ok(&["rm", "-f", &runner]);

    // New containers read what was written before the upgrade.
    let out = t.run_sh(&mount(&vol), "cat /data/v1.txt /data/before.txt");
    assert_eq!(out, "v1\nbefore\n");
    // The upgraded plugin runs with the settings given at install (BAI_S3_UNMOUNT_DELAY=5).
    let st = t.status(&vol);
    assert_eq!(
        st["mounted"],
        json!(true),
        "no unmount delay after the upgrade: {st}"
    );
    let out = t.run_sh(&format!("{},readonly", mount(&sub)), "cat /data/seed.txt");
    assert_eq!(out, "seed\n");
    say("after the upgrade: options kept, data read by new containers");
    drop(guard);
    drop(reg);
}

/// Volumes the client kit's tests made (`bai-s3.e2e<hex>`, `.ro` twins too).
fn remove_kit_volumes() {
    let o = docker(&["volume", "ls", "-q", "--filter", "name=bai-s3.e2e"]);
    for v in stdout_of(&o).lines().map(str::trim) {
        if v.starts_with("bai-s3.e2e") {
            remove_volume(v);
        }
    }
}

fn kit_python() -> PathBuf {
    support::repo().join("clients/python/.venv/bin/python")
}

fn kit_ready(py: &Path) -> Result<(), String> {
    let o = Command::new(py)
        .args(["-c", "import aiodocker, pytest; assert aiodocker.__version__ == '0.27.0', aiodocker.__version__"])
        .output()
        .map_err(|e| format!("{} does not run ({e}): scripts/deps.sh client", py.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{} lacks aiodocker 0.27.0 or pytest (scripts/deps.sh client): {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// 2. The Python client kit's end-to-end tests (`clients/python/tests/e2e`, pytest) against the
///    managed plugin: Backend.AI's agent lifecycle, eight kernels on one s3fs, the ro twin,
///    removal of unused volumes. Then, with S3 itself, every object the tests say they wrote
///    is in the bucket under the vfolder's prefix with that content.
#[test]
#[cfg_attr(not(bai_s3_docker), ignore = "needs dockerd, debootstrap, SeaweedFS")]
fn python_client_kit_under_dockerd() {
    let Some(t) = e2e("python_client_kit_under_dockerd") else {
        return;
    };
    let py = kit_python();
    if let Err(e) = kit_ready(&py) {
        if support::in_ci() {
            panic!("python_client_kit_under_dockerd: under CI=true: {e}");
        }
        say(&format!("SKIP python_client_kit_under_dockerd: {e}"));
        return;
    }
    remove_kit_volumes();
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_kit_volumes();
        }
    }
    let _cleanup = Cleanup;

    let bucket = t.bucket("pykit");
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expect.jsonl");
    let backends = t.env.config_dir.join("backends.toml");
    let t0 = std::time::Instant::now();
    let o = run_with_timeout(
        Command::new(&py)
            .current_dir(support::repo().join("clients/python"))
            .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/e2e"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("BAI_S3_E2E_DRIVER", PLUGIN)
            .env("BAI_S3_E2E_IMAGE", IMAGE)
            .env("BAI_S3_E2E_BACKENDS", &backends)
            .env("BAI_S3_E2E_BUCKET", &bucket)
            .env("BAI_S3_E2E_LABEL", &t.label)
            .env("BAI_S3_E2E_EXPECT", &expect),
        Duration::from_secs(900),
    );
    let report = format!("{}{}", stdout_of(&o), stderr_of(&o));
    say(&format!(
        "--- pytest clients/python/tests/e2e ({:.1} s) ---\n{}",
        t0.elapsed().as_secs_f64(),
        report.trim_end()
    ));
    assert!(
        o.status.success(),
        "the client kit's e2e tests failed ({})\n{}",
        o.status,
        t.plugin_log_tail(30)
    );
    assert!(
        report.contains("4 passed") && !report.contains("skipped"),
        "not every client kit e2e test ran and passed"
    );

    // Every object the tests wrote through the kernels, read with S3 (the last write wins).
    let mut want = BTreeMap::new();
    for line in fs::read_to_string(&expect).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        want.insert(
            v["key"].as_str().unwrap().to_string(),
            v["content"].as_str().unwrap().to_string(),
        );
    }
    // 2 objects of the lifecycle test, 8 of the eight kernels, 1 of the ro twin.
    assert_eq!(want.len(), 11, "the tests reported {want:?}");
    for (key, content) in &want {
        let got = poll(Duration::from_secs(10), || {
            object(&t, &bucket, key).filter(|b| b == content.as_bytes())
        });
        assert!(
            got.is_some(),
            "s3://{bucket}/{key}: {:?}, wanted {content:?}",
            object(&t, &bucket, key).map(|b| String::from_utf8_lossy(&b).into_owned())
        );
    }
    say(&format!(
        "checked with S3: {} objects under vfolders/ in {bucket}",
        want.len()
    ));
    // The kit rewrote the plugin's backends file: still 0600, both backends there.
    let mode = fs::metadata(&backends).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backends file mode {mode:o}");
    let text = fs::read_to_string(&backends).unwrap();
    assert!(text.contains("[backends.default]") && text.contains("[backends.storage-proxy]"));
}
