//! Support for the end-to-end tests against a real Docker engine (`tests/e2e_docker.rs`): the
//! busybox test image, the `bai-s3` managed plugin built from this tree and pointed at the test
//! binary's SeaweedFS, a `docker` runner with clear failure messages, the plugin's log lines,
//! and the s3fs processes the plugin runs (visible from the host's PID namespace).
//!
//! One plugin per test-binary run. Every test holds one global lock for its whole run (the
//! dockerd-restart and swarm tests disturb everything else), uses names unique to the run, and
//! removes its own containers, services and volumes when it ends (`E2e`'s Drop). Leftovers of a
//! crashed earlier run are removed when the first test starts; the plugin is disabled and
//! removed when the test process exits.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, say};

pub mod engine;
pub mod registry;

/// The plugin name the scenarios use (`volume-driver=bai-s3`).
pub const PLUGIN: &str = "bai-s3";
/// The image every container runs; made locally from Debian's busybox-static.
pub const IMAGE: &str = "bai-s3-test-busybox:latest";
/// Marks the image layout (re-imported when it changes).
const IMAGE_LAYOUT: &str = "1";
/// Label put on every container and service the tests make (value: the test's id).
pub const LABEL: &str = "bai-s3-e2e";
/// Prefix of every volume name the tests make (cleanup of a crashed run removes these).
pub const NAME_PREFIX: &str = "e2e-";
/// Where the plugin mounts s3fs, as seen inside the plugin (its `propagatedMount`).
pub const PLUGIN_SHARED_ROOT: &str = "/var/lib/bai-s3/volumes/.s3fs/";

const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` with stdin closed, collecting its output; panics when it cannot start or does not
/// end within `timeout` (then it is killed).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = match support::poll(timeout, || child.try_wait().ok().flatten()) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?} (killed)");
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(args: &[&str], o: &Output) -> String {
    format!(
        "`docker {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        o.status,
        text(&o.stdout).trim_end(),
        text(&o.stderr).trim_end()
    )
}

/// `docker ARGS`, whatever its outcome.
pub fn docker(args: &[&str]) -> Output {
    run_with_timeout(Command::new("docker").args(args), DOCKER_TIMEOUT)
}

/// `docker ARGS`, which must succeed; returns its stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    if !o.status.success() {
        panic!("{}", describe(args, &o));
    }
    text(&o.stdout)
}

/// `docker ARGS`, which must fail; returns its output.
pub fn docker_fails(args: &[&str]) -> Output {
    let o = docker(args);
    if o.status.success() {
        panic!("expected a failure, but {}", describe(args, &o));
    }
    o
}

pub fn stdout_of(o: &Output) -> String {
    text(&o.stdout)
}

pub fn stderr_of(o: &Output) -> String {
    text(&o.stderr)
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn docker_answers() -> bool {
    // Bounded: a dockerd that accepts but does not serve yet makes `docker version` hang.
    Command::new("timeout")
        .args(["5", "docker", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// A name unique to this run, valid as a Docker volume/container/service name and as a bucket.
pub fn e2e_name(tag: &str) -> String {
    support::unique_name_with(NAME_PREFIX, tag, 24)
}

/// A new, empty bucket named by [`e2e_name`].
pub fn new_bucket(s3: &support::S3, tag: &str) -> String {
    let b = e2e_name(tag);
    s3.create_bucket(&b)
        .unwrap_or_else(|e| panic!("create bucket {b}: {e}"));
    b
}

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

fn deb_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| text(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// What is missing for the end-to-end tests (empty when nothing). Starts dockerd with
/// `scripts/dockerd.sh` when it does not answer.
fn missing_prereqs() -> Vec<String> {
    let mut missing = engine::missing(
        &["docker", "dockerd", "debootstrap", "chroot", "tar"],
        "docker",
    );
    if !deb_installed("busybox-static") {
        missing.push("busybox-static is not installed (scripts/deps.sh docker)".to_string());
    }
    if missing.is_empty() && !docker_answers() {
        say("e2e: dockerd does not answer; starting it with scripts/dockerd.sh");
        let o = run_with_timeout(
            &mut Command::new(support::repo().join("scripts/dockerd.sh")),
            Duration::from_secs(90),
        );
        if !o.status.success() || !docker_answers() {
            missing.push(format!(
                "dockerd does not answer and scripts/dockerd.sh could not start it: {}{}",
                text(&o.stdout),
                text(&o.stderr)
            ));
        }
    }
    missing
}

// ---------------------------------------------------------------------------------------------
// The environment shared by all tests of the binary
// ---------------------------------------------------------------------------------------------

pub struct Env {
    pub s3: &'static support::S3Server,
    /// Full plugin id (dockerd tags the plugin's output with `plugin=<id>`).
    pub plugin_id: String,
    /// Host folder bound at the plugin's propagatedMount.
    pub propagated: PathBuf,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
}

static LOCK: Mutex<()> = Mutex::new(());
static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
static PREREQS: OnceLock<Vec<String>> = OnceLock::new();

/// One test's hold on the engine: the global lock, its label, and what it made (removed on
/// drop).
pub struct E2e {
    pub env: &'static Env,
    pub test: String,
    /// `bai-s3-e2e=<test id>`, for `--label`.
    pub label: String,
    volumes: Mutex<Vec<String>>,
    services: Mutex<Vec<String>>,
    started: Instant,
    // Last: released after Drop's cleanup.
    _lock: MutexGuard<'static, ()>,
}

/// Starts an end-to-end test: None (after a SKIP line) when a prerequisite is missing and CI is
/// not `true`; under `CI=true` a missing prerequisite panics. The tests that call it are also
/// marked `#[cfg_attr(not(bai_s3_docker), ignore = ..)]` (set by `build.rs`).
pub fn e2e(test: &str) -> Option<E2e> {
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing = PREREQS.get_or_init(missing_prereqs);
    if !support::require(test, missing) {
        return None;
    }
    let env = match ENV.get_or_init(setup) {
        Ok(env) => env,
        Err(e) => panic!("{test}: the end-to-end environment could not be set up:\n{e}"),
    };
    // A test that died may have left the plugin disabled (the restart test); every test starts
    // from an enabled plugin.
    ensure_enabled(env);
    say(&format!("=== {test}"));
    Some(E2e {
        env,
        test: test.to_string(),
        label: format!("{LABEL}={test}-{:x}", std::process::id()),
        volumes: Mutex::new(Vec::new()),
        services: Mutex::new(Vec::new()),
        started: Instant::now(),
        _lock: lock,
    })
}

fn setup() -> Result<Env, String> {
    let t0 = Instant::now();
    cleanup_previous_runs();
    ensure_image()?;
    let s3 = support::shared_s3();
    build_plugin()?;

    // Config and state folders of the plugin, private to root.
    let base = tempfile::Builder::new()
        .prefix("bai-s3-e2e-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?
        .keep();
    let config_dir = base.join("config");
    let state_dir = base.join("state");
    for d in [&config_dir, &state_dir] {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    }
    support::write_private_file(
        &config_dir.join("backends.toml"),
        &support::backends_toml(&[s3.backend("default")]),
    );
    register_teardown(base.clone());

    let set = docker(&[
        "plugin",
        "set",
        PLUGIN,
        &format!("config.source={}", config_dir.display()),
        &format!("state.source={}", state_dir.display()),
        "BAI_S3_LOG_LEVEL=debug",
    ]);
    if !set.status.success() {
        return Err(describe(&["plugin", "set", PLUGIN, "..."], &set));
    }
    let en = docker(&["plugin", "enable", PLUGIN]);
    if !en.status.success() {
        return Err(describe(&["plugin", "enable", PLUGIN], &en));
    }
    let plugin_id = docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", PLUGIN])
        .trim()
        .to_string();
    let propagated = PathBuf::from(format!(
        "/var/lib/docker/plugins/{plugin_id}/propagated-mount"
    ));
    say(&format!(
        "e2e: plugin {PLUGIN} ({}) enabled against SeaweedFS {} in {:.1} s",
        &plugin_id[..12.min(plugin_id.len())],
        s3.endpoint,
        t0.elapsed().as_secs_f64()
    ));
    Ok(Env {
        s3,
        plugin_id,
        propagated,
        config_dir,
        state_dir,
    })
}

/// The busybox image, made once (kept across runs: it is cheap to keep and takes no registry).
fn ensure_image() -> Result<(), String> {
    let have = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"bai-s3-test-image-layout\"}}",
        IMAGE,
    ]);
    if have.status.success() && stdout_of(&have).trim() == IMAGE_LAYOUT {
        return Ok(());
    }
    import_image("docker")?;
    say(&format!("e2e: imported {IMAGE}"));
    Ok(())
}

/// Imports the busybox root as [`IMAGE`] with `CLI import` (`CLI` is a shell word list such as
/// `docker`, `podman` or `docker -H unix:///run/docker26.sock`; every engine takes the same
/// `import -c` arguments).
pub fn import_image(cli: &str) -> Result<(), String> {
    let dir = busybox_root()?;
    let o = run_with_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "tar -C '{}' -c . | {cli} import -c 'CMD [\"sh\"]' -c 'LABEL bai-s3-test-image-layout={IMAGE_LAYOUT}' - {IMAGE}",
            dir.path().display()
        )),
        Duration::from_secs(120),
    );
    if !o.status.success() {
        return Err(format!("{cli} import of {IMAGE}: {}", text(&o.stderr)));
    }
    Ok(())
}

/// The image's root in a new temporary folder: Debian's static busybox and its applet links.
fn busybox_root() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("bai-s3-e2e-image-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let root = dir.path();
    // Like Docker Hub's busybox: no /data (a mount destination that exists in the image makes
    // Docker copy it into an empty volume first: a separate test covers that), but /root, an
    // empty folder of the image, for that test.
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| format!("copy /bin/busybox: {e}"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwork:x:1000:1000:work:/tmp:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nwork:x:1000:\n").unwrap();
    let o = run_with_timeout(
        Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "--install", "-s", "/bin"]),
        Duration::from_secs(60),
    );
    if !o.status.success() {
        return Err(format!(
            "busybox --install in {}: {}",
            root.display(),
            text(&o.stderr)
        ));
    }
    for applet in ["sh", "cat", "echo", "ls", "stat", "sleep", "id", "wc"] {
        if fs::symlink_metadata(root.join("bin").join(applet)).is_err() {
            return Err(format!("busybox --install made no /bin/{applet}"));
        }
    }
    Ok(dir)
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().ok().and_then(|m| m.modified().ok())
        };
        if let Some(t) = t {
            if newest.map(|n| t > n).unwrap_or(true) {
                newest = Some(t);
            }
        }
    }
    newest
}

/// `target/release/bai-s3`, built when it is missing or older than the sources, then
/// `plugin/build.sh` (which replaces an existing plugin of the same name).
fn build_plugin() -> Result<(), String> {
    let repo = support::repo();
    let bin = repo.join("target/release/bai-s3");
    let bin_time = fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let src_time = [
        repo.join("src"),
        repo.join("Cargo.toml"),
        repo.join("Cargo.lock"),
    ]
    .iter()
    .filter_map(|p| {
        if p.is_dir() {
            newest_mtime(p)
        } else {
            fs::metadata(p).and_then(|m| m.modified()).ok()
        }
    })
    .max();
    let stale = match (bin_time, src_time) {
        (None, _) => true,
        (Some(b), Some(s)) => s > b,
        (Some(_), None) => false,
    };
    if stale {
        say(&format!(
            "e2e: {} is missing or older than the sources: cargo build --release",
            bin.display()
        ));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let o = run_with_timeout(
            Command::new(cargo)
                .current_dir(&repo)
                .args(["build", "--release", "--bin", "bai-s3"]),
            Duration::from_secs(1200),
        );
        if !o.status.success() || !bin.is_file() {
            return Err(format!(
                "cargo build --release failed, so there is no daemon to put in the plugin:\n{}",
                text(&o.stderr)
            ));
        }
    }
    let t0 = Instant::now();
    let o = run_with_timeout(
        Command::new(repo.join("plugin/build.sh"))
            .current_dir(&repo)
            .env("BAI_S3_PLUGIN_NAME", PLUGIN)
            .env("BAI_S3_BINARY", &bin),
        Duration::from_secs(900),
    );
    if !o.status.success() {
        return Err(format!(
            "plugin/build.sh failed ({}):\n{}{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        ));
    }
    say(&format!(
        "e2e: plugin/build.sh made plugin {PLUGIN} in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Removes a volume for good, with any container (running or stopped) that still uses it:
/// a volume left in dockerd's database after its plugin is removed costs every later dockerd
/// start ~15 s. Says so when it cannot.
pub fn remove_volume(v: &str) {
    let users = docker(&["ps", "-aq", "--filter", &format!("volume={v}")]);
    let ids = lines(&stdout_of(&users));
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
    let o = docker(&["volume", "rm", "-f", v]);
    if !o.status.success() && docker(&["volume", "inspect", v]).status.success() {
        say(&format!(
            "e2e: WARNING: volume {v} could not be removed: {}",
            stderr_of(&o).trim()
        ));
    }
}

/// Removes containers, services and volumes left by earlier runs (and a swarm they started).
fn cleanup_previous_runs() {
    remove_labelled(None);
    // A swarm this suite initialised carries our label on its node.
    let node = docker(&[
        "node",
        "inspect",
        "self",
        "-f",
        &format!("{{{{index .Spec.Labels \"{LABEL}\"}}}}"),
    ]);
    if node.status.success() && !stdout_of(&node).trim().is_empty() {
        say("e2e: leaving the swarm an earlier run left behind");
        let _ = docker(&["swarm", "leave", "--force"]);
    }
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={NAME_PREFIX}"),
    ]);
    for v in lines(&stdout_of(&vols)) {
        if v.starts_with(NAME_PREFIX) {
            remove_volume(&v);
        }
    }
}

/// Removes containers and services labelled `LABEL` (any value, or exactly `label`).
fn remove_labelled(label: Option<&str>) {
    let filter = format!("label={}", label.unwrap_or(LABEL));
    let svcs = docker(&["service", "ls", "-q", "--filter", &filter]);
    if svcs.status.success() {
        for s in lines(&stdout_of(&svcs)) {
            let _ = docker(&["service", "rm", &s]);
        }
    }
    let ctrs = docker(&["ps", "-aq", "--filter", &filter]);
    let ids = lines(&stdout_of(&ctrs));
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
}

static TEARDOWN_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn teardown_at_exit() {
    // Nothing here may panic across the FFI boundary.
    let _ = std::panic::catch_unwind(|| {
        if !docker_answers() {
            return;
        }
        remove_labelled(None);
        let vols = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name={NAME_PREFIX}"),
        ]);
        for v in lines(&stdout_of(&vols)) {
            if v.starts_with(NAME_PREFIX) {
                remove_volume(&v);
            }
        }
        let _ = docker(&["plugin", "disable", "-f", PLUGIN]);
        let rm = docker(&["plugin", "rm", "-f", PLUGIN]);
        if let Some(dir) = TEARDOWN_DIR.get() {
            // Only when the plugin is gone: its state folder is bound into it.
            if rm.status.success() && support::mounts_under(dir).is_empty() {
                let _ = fs::remove_dir_all(dir);
            }
        }
        say("e2e: plugin disabled and removed");
    });
}

fn register_teardown(dir: PathBuf) {
    if TEARDOWN_DIR.set(dir).is_ok() {
        unsafe {
            atexit(teardown_at_exit);
        }
    }
}

fn ensure_enabled(env: &Env) {
    if plugin_enabled() {
        return;
    }
    say("e2e: the plugin is not enabled (an earlier test stopped in the middle?); enabling it");
    docker_ok(&["plugin", "enable", PLUGIN]);
    let _ = env;
}

pub fn plugin_enabled() -> bool {
    let o = docker(&["plugin", "inspect", "-f", "{{.Enabled}}", PLUGIN]);
    o.status.success() && stdout_of(&o).trim() == "true"
}

impl E2e {
    pub fn s3(&self) -> &'static support::S3 {
        self.env.s3.s3()
    }

    /// A volume name that this test's cleanup removes.
    pub fn volume_name(&self, tag: &str) -> String {
        let v = e2e_name(tag);
        self.volumes.lock().unwrap().push(v.clone());
        v
    }

    /// A service name that this test's cleanup removes.
    pub fn service_name(&self, tag: &str) -> String {
        let s = e2e_name(tag);
        self.services.lock().unwrap().push(s.clone());
        s
    }

    /// A new, empty bucket.
    pub fn bucket(&self, tag: &str) -> String {
        new_bucket(self.s3(), tag)
    }

    /// `docker volume create -d bai-s3 [-o k=v]... NAME`, which must succeed.
    pub fn create_volume(&self, name: &str, opts: &[&str]) {
        let mut args = vec!["volume", "create", "-d", PLUGIN];
        for o in opts {
            args.push("-o");
            args.push(o);
        }
        args.push(name);
        let out = docker_ok(&args);
        assert_eq!(out.trim(), name, "docker volume create printed {out:?}");
    }

    /// `docker run --label <ours> ARGS`, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["run", "--label", self.label.as_str()];
        a.extend_from_slice(args);
        docker(&a)
    }

    /// `docker run --rm --mount MOUNT IMAGE sh -c SCRIPT`, which must succeed; returns stdout.
    pub fn run_sh(&self, mount: &str, script: &str) -> String {
        self.run_sh_as(&[], mount, script)
    }

    pub fn run_sh_as(&self, extra: &[&str], mount: &str, script: &str) -> String {
        let mut a = vec!["--rm"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--mount", mount, IMAGE, "sh", "-c", script]);
        let o = self.run(&a);
        if !o.status.success() {
            panic!(
                "{}\n{}",
                describe(&[&["run", "--label", &self.label], &a[..]].concat(), &o),
                self.plugin_log_tail(20)
            );
        }
        stdout_of(&o)
    }

    /// A detached container running `sleep 600` with `MOUNT`; returns its name.
    pub fn start_sleeper(&self, tag: &str, mount: &str) -> String {
        let name = e2e_name(tag);
        let o = self.run(&[
            "-d", "--name", &name, "--mount", mount, IMAGE, "sleep", "600",
        ]);
        if !o.status.success() {
            panic!(
                "{}\n{}",
                describe(&["run", "-d", "--name", &name, "--mount", mount], &o),
                self.plugin_log_tail(20)
            );
        }
        name
    }

    /// The `Status` map that `docker volume inspect` prints.
    pub fn status(&self, volume: &str) -> Value {
        volume_inspect(volume)
            .get("Status")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Names of `docker volume ls`.
    pub fn volume_names(&self) -> Vec<String> {
        lines(&docker_ok(&["volume", "ls", "--format", "{{.Name}}"]))
    }

    /// Live s3fs processes of the plugin for `bucket`.
    pub fn s3fs_for_bucket(&self, bucket: &str) -> Vec<i32> {
        plugin_s3fs_pids()
            .into_iter()
            .filter(|p| {
                support::cmdline(*p)
                    .get(1)
                    .map(|b| b == bucket)
                    .unwrap_or(false)
            })
            .collect()
    }

    /// The volume's mount point as the host sees it.
    pub fn host_mountpoint(&self, volume: &str) -> PathBuf {
        self.env.propagated.join(volume)
    }

    /// Whether the host's mount table has a mount at the volume's mount point.
    pub fn host_mounted(&self, volume: &str) -> bool {
        support::is_mountpoint(&self.host_mountpoint(volume))
    }

    /// Waits until the volume is unmounted: inspect says `mounted: false`, no mount at its mount
    /// point and no s3fs left for `bucket` (when no other volume uses it).
    pub fn wait_unmounted(&self, volume: &str, bucket: &str) {
        let r = support::poll(Duration::from_secs(20), || {
            let st = self.status(volume);
            (st["mounted"] == Value::Bool(false)
                && !self.host_mounted(volume)
                && self.s3fs_for_bucket(bucket).is_empty())
            .then_some(())
        });
        if r.is_none() {
            panic!(
                "volume {volume} still mounted 20 s after its last container: status {}, host mount {}, s3fs {:?}\n{}",
                self.status(volume),
                self.host_mounted(volume),
                self.s3fs_for_bucket(bucket)
                    .iter()
                    .map(|p| support::cmdline(*p).join(" "))
                    .collect::<Vec<_>>(),
                self.plugin_log_tail(30)
            );
        }
    }

    /// The plugin's output lines from dockerd's log.
    pub fn plugin_log(&self) -> Vec<String> {
        plugin_log_lines(&self.env.plugin_id)
    }

    /// The last `n` lines of the plugin's log, without the Get/Capabilities chatter.
    pub fn plugin_log_tail(&self, n: usize) -> String {
        let l: Vec<String> = self
            .plugin_log()
            .into_iter()
            .filter(|l| {
                l.contains("bai_s3::")
                    && !l.contains("endpoint=/VolumeDriver.Capabilities")
                    && !l.contains("endpoint=/VolumeDriver.Get")
            })
            .map(|l| match (l.find("msg=\""), l.rfind("\" plugin=")) {
                (Some(a), Some(b)) if b > a + 5 => l[a + 5..b].replace("\\\"", "\""),
                _ => l,
            })
            .collect();
        let start = l.len().saturating_sub(n);
        format!(
            "--- plugin log (last {n} lines) ---\n{}",
            l[start..].join("\n")
        )
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        if std::thread::panicking() {
            say(&self.plugin_log_tail(25));
        }
        let label = self.label.clone();
        remove_labelled(Some(&label));
        for s in self.services.lock().unwrap().iter() {
            let _ = docker(&["service", "rm", s]);
        }
        // A service's tasks are removed in the background; their containers hold the volumes.
        let _ = support::poll(Duration::from_secs(30), || {
            let c = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
            let svc_ctrs: Vec<String> = self
                .services
                .lock()
                .unwrap()
                .iter()
                .flat_map(|s| {
                    lines(&stdout_of(&docker(&[
                        "ps",
                        "-aq",
                        "--filter",
                        &format!("label=com.docker.swarm.service.name={s}"),
                    ])))
                })
                .collect();
            (lines(&stdout_of(&c)).is_empty() && svc_ctrs.is_empty()).then_some(())
        });
        for v in self.volumes.lock().unwrap().iter() {
            remove_volume(v);
        }
        say(&format!(
            "=== {} done in {:.1} s",
            self.test,
            self.started.elapsed().as_secs_f64()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------------------------

/// `docker volume inspect NAME`'s object.
pub fn volume_inspect(name: &str) -> Value {
    let out = docker_ok(&["volume", "inspect", name]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("docker volume inspect {name}: not JSON ({e}): {out}"));
    v.get(0)
        .cloned()
        .unwrap_or_else(|| panic!("docker volume inspect {name}: empty answer {out}"))
}

/// Live s3fs processes of the plugin (host PID namespace): command line names a mount under the
/// plugin's shared mount folder.
pub fn plugin_s3fs_pids() -> Vec<i32> {
    let mut v: Vec<i32> = support::all_pids()
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "s3fs")
                .unwrap_or(false)
        })
        .filter(|p| support::process_alive(*p))
        .filter(|p| {
            support::cmdline(*p)
                .iter()
                .any(|a| a.starts_with(PLUGIN_SHARED_ROOT))
        })
        .collect();
    v.sort();
    v
}

/// The pid of the running dockerd, if any.
pub fn dockerd_pid() -> Option<i32> {
    support::all_pids().into_iter().find(|p| {
        fs::read_to_string(format!("/proc/{p}/comm"))
            .map(|c| c.trim() == "dockerd")
            .unwrap_or(false)
            && support::process_alive(*p)
    })
}

/// dockerd's log file: where its stderr goes (scripts/dockerd.sh: /var/log/bai-s3-dockerd.log).
pub fn dockerd_log_path() -> Option<PathBuf> {
    let pid = dockerd_pid()?;
    let p = fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
    p.is_file().then_some(p)
}

/// dockerd logs each line the plugin prints as `... msg="<line>" plugin=<id>`.
pub fn plugin_log_lines(plugin_id: &str) -> Vec<String> {
    if dockerd_log_path().is_none() {
        return vec!["(dockerd's log file not found: its stderr is not a file)".to_string()];
    }
    dockerd_log_lines(&format!("plugin={plugin_id}"))
}

/// Kills dockerd with SIGTERM and waits until it is gone and `docker version` fails.
pub fn stop_dockerd() {
    let pid = dockerd_pid().expect("no dockerd process to stop");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM dockerd");
    support::wait_for(
        "dockerd to exit after SIGTERM",
        Duration::from_secs(60),
        || (!support::process_alive(pid) && !docker_answers()).then_some(()),
    );
}

/// Starts dockerd with scripts/dockerd.sh (which waits until it answers), and says which
/// volumes dockerd could not restore: each one whose plugin is gone costs its start ~15 s.
pub fn start_dockerd() {
    let t0 = std::time::Instant::now();
    let o = run_with_timeout(
        &mut Command::new(support::repo().join("scripts/dockerd.sh")),
        Duration::from_secs(300),
    );
    assert!(
        o.status.success(),
        "scripts/dockerd.sh failed after {:.0} s: {}{}",
        t0.elapsed().as_secs_f64(),
        text(&o.stdout),
        text(&o.stderr)
    );
    let orphans = dockerd_log_lines("Error restoring volume");
    if !orphans.is_empty() {
        say(&format!(
            "e2e: dockerd answered after {:.1} s; it could not restore {} volume(s) whose plugin is gone:\n{}",
            t0.elapsed().as_secs_f64(),
            orphans.len(),
            orphans.join("\n")
        ));
    }
}

/// Lines of dockerd's log that contain `needle`.
pub fn dockerd_log_lines(needle: &str) -> Vec<String> {
    let Some(path) = dockerd_log_path() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&fs::read(&path).unwrap_or_default())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
