//! The scenarios every engine must pass with bai-s3 as a legacy plugin (issue 17), written once
//! against an [`Engine`] (a CLI that speaks `docker`'s verbs: Podman, or the docker CLI pointed
//! at another dockerd), and the engines' set-up: [`podman`] here, Docker Engine 26 in
//! `docker26`.
//!
//! Each test is a [`Case`]: the engine, a `bai-s3 serve` of its own (the real daemon, a legacy
//! install on a socket the engine is told about), the shared SeaweedFS, and what the test made
//! (labelled containers, volumes), removed when it ends. The daemon's Drop then checks that no
//! s3fs and no mount of it is left.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{e2e_name, lines, run_with_timeout, stderr_of, stdout_of, text, IMAGE, LABEL};
use crate::support::{self, say, Daemon, S3Server};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A container engine's CLI, as the scenarios drive it.
pub struct Engine {
    /// Engine and version, for messages ("Podman 4.3.1").
    pub what: String,
    program: String,
    /// Arguments before the verb (`-H unix:///...`).
    pre_args: Vec<String>,
    envs: Vec<(String, OsString)>,
    /// Arguments every `run` and `create` gets (`--network none`: a second engine on the host
    /// network can take the first dockerd's docker0 away).
    run_args: Vec<String>,
    /// The volume driver name the engine knows bai-s3 by.
    pub driver: String,
    /// Podman counts a volume's containers itself and sends one constant Mount ID: bai-s3 sees
    /// one holder however many containers use the volume. dockerd sends one ID per mount.
    pub counts_holders_itself: bool,
    /// Run `exec` by nsenter into the container's mount namespace and root: dockerd in a chroot
    /// needs `DOCKER_RAMDISK` (runc chroots into the container's root instead of pivot_root),
    /// and then `docker exec` joins the mount namespace but not that chroot: it runs in the
    /// engine's own root, where /data is no mount at all.
    exec_by_nsenter: bool,
}

impl Engine {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.pre_args).args(args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// The CLI as a shell word list (for pipes).
    pub fn shell_words(&self) -> String {
        let mut w: Vec<String> = vec!["env".into()];
        for (k, v) in &self.envs {
            w.push(format!("{k}={}", v.to_string_lossy()));
        }
        w.push(self.program.clone());
        w.extend(self.pre_args.iter().cloned());
        w.join(" ")
    }

    pub fn describe(&self, args: &[&str], o: &Output) -> String {
        format!(
            "`{} {}` ({}) exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.program,
            args.join(" "),
            self.what,
            o.status,
            text(&o.stdout).trim_end(),
            text(&o.stderr).trim_end()
        )
    }

    /// `CLI ARGS`, whatever its outcome.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), TIMEOUT)
    }

    /// `CLI ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(o.status.success(), "{}", self.describe(args, &o));
        text(&o.stdout)
    }

    /// `CLI ARGS`, which must fail; returns its output.
    pub fn fails(&self, args: &[&str]) -> Output {
        let o = self.cli(args);
        assert!(
            !o.status.success(),
            "expected a failure, but {}",
            self.describe(args, &o)
        );
        o
    }

    pub fn volume_names(&self) -> Vec<String> {
        lines(&self.ok(&["volume", "ls", "--format", "{{.Name}}"]))
    }
}

// ---------------------------------------------------------------------------------------------
// One test
// ---------------------------------------------------------------------------------------------

/// One test's hold on an engine: the lock shared with the Docker tests of the binary, its own
/// daemon, and what it made.
pub struct Case {
    pub engine: &'static Engine,
    pub s3: &'static S3Server,
    pub daemon: Daemon,
    pub test: String,
    label: String,
    volumes: Mutex<Vec<String>>,
    started: Instant,
    _lock: MutexGuard<'static, ()>,
}

impl Case {
    /// A test on `engine` (made by `setup` once per binary; `setup` points the engine at the
    /// socket of the daemon it is given and returns the engine). `daemon` starts this test's
    /// daemon. None (after a SKIP line) when `missing` is not empty and CI is not `true`.
    pub fn start(
        test: &str,
        missing: &[String],
        engine: &'static OnceLock<Result<Engine, String>>,
        setup: impl FnOnce() -> Result<Engine, String>,
        daemon: impl FnOnce(&'static S3Server) -> Daemon,
    ) -> Option<Case> {
        let lock = super::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !support::require(test, missing) {
            return None;
        }
        let engine = match engine.get_or_init(setup) {
            Ok(e) => e,
            Err(e) => panic!("{test}: the engine could not be set up:\n{e}"),
        };
        let s3 = support::shared_s3();
        let daemon = daemon(s3);
        say(&format!("=== {test} ({})", engine.what));
        Some(Case {
            engine,
            s3,
            daemon,
            test: test.to_string(),
            label: format!("{LABEL}={test}-{:x}", std::process::id()),
            volumes: Mutex::new(Vec::new()),
            started: Instant::now(),
            _lock: lock,
        })
    }

    pub fn s3(&self) -> &'static support::S3 {
        self.s3.s3()
    }

    /// A volume name that this test's cleanup removes.
    pub fn volume_name(&self, tag: &str) -> String {
        let v = e2e_name(tag);
        self.volumes.lock().unwrap().push(v.clone());
        v
    }

    /// A new, empty bucket.
    pub fn bucket(&self, tag: &str) -> String {
        super::new_bucket(self.s3(), tag)
    }

    /// `volume create -d bai-s3 [-o k=v]... NAME`, which must succeed.
    pub fn create_volume(&self, name: &str, opts: &[&str]) {
        let out = self.engine.ok(&self.create_args(name, opts));
        assert_eq!(out.trim(), name, "volume create printed {out:?}");
    }

    fn create_args<'a>(&'a self, name: &'a str, opts: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["volume", "create", "--driver", self.engine.driver.as_str()];
        for o in opts {
            args.extend(["-o", o]);
        }
        args.push(name);
        args
    }

    /// `VERB --label <ours> <engine's run args> ARGS` (VERB: run or create), whatever its outcome.
    pub fn run_verb(&self, verb: &str, args: &[&str]) -> Output {
        let mut a = vec![verb, "--label", self.label.as_str()];
        a.extend(self.engine.run_args.iter().map(String::as_str));
        a.extend_from_slice(args);
        self.engine.cli(&a)
    }

    /// `run --rm -v VOLUME:/data IMAGE sh -c SCRIPT`, whatever its outcome.
    pub fn try_sh(&self, volume: &str, script: &str) -> Output {
        let v = format!("{volume}:/data");
        self.run_verb("run", &["--rm", "-v", &v, IMAGE, "sh", "-c", script])
    }

    /// Like [`Case::try_sh`], which must succeed; returns stdout.
    pub fn sh(&self, volume: &str, script: &str) -> String {
        let o = self.try_sh(volume, script);
        assert!(
            o.status.success(),
            "{}\n{}",
            self.engine
                .describe(&["run", "--rm", "-v", volume, "sh", "-c", script], &o),
            self.daemon.logs_tail(30)
        );
        stdout_of(&o)
    }

    /// A detached container running `sleep 600` on VOLUME at /data; returns its name.
    pub fn start_sleeper(&self, tag: &str, volume: &str) -> String {
        let name = e2e_name(tag);
        let v = format!("{volume}:/data");
        let o = self.run_verb(
            "run",
            &["-d", "--name", &name, "-v", &v, IMAGE, "sleep", "600"],
        );
        assert!(
            o.status.success(),
            "{}\n{}",
            self.engine
                .describe(&["run", "-d", "--name", &name, "-v", &v], &o),
            self.daemon.logs_tail(30)
        );
        name
    }

    /// `create --name NAME -v VOLUME:/data IMAGE ARGS...`, which must succeed; returns NAME.
    pub fn create_container(&self, tag: &str, volume: &str, args: &[&str]) -> String {
        let name = e2e_name(tag);
        let v = format!("{volume}:/data");
        let mut a = vec!["--name", name.as_str(), "-v", v.as_str(), IMAGE];
        a.extend_from_slice(args);
        let o = self.run_verb("create", &a);
        assert!(o.status.success(), "{}", self.engine.describe(&a, &o));
        name
    }

    /// The container never ran (its start time is the zero time).
    pub fn assert_never_started(&self, name: &str) {
        let started = self
            .engine
            .ok(&["inspect", "-f", "{{.State.StartedAt}}", name]);
        assert!(
            started.contains("0001-01-01"),
            "{name} started ({}) although its Mount was refused",
            started.trim()
        );
    }

    /// `exec NAME sh -c SCRIPT`, which must succeed; returns stdout.
    pub fn exec(&self, name: &str, script: &str) -> String {
        if !self.engine.exec_by_nsenter {
            return self.engine.ok(&["exec", name, "sh", "-c", script]);
        }
        let pid = self.engine.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        let pid = pid.trim();
        let args = ["-t", pid, "-m", "-r", "-w", "--", "sh", "-c", script];
        let o = run_with_timeout(Command::new("nsenter").args(args), TIMEOUT);
        assert!(
            o.status.success(),
            "`nsenter {}` into {name}: {}\n{}{}",
            args.join(" "),
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// The daemon's `Status` of a volume (Get over its socket, as the engine asks).
    pub fn status(&self, volume: &str) -> Value {
        support::status(&self.daemon, volume)
    }

    /// Live s3fs processes of this test's daemon for `bucket`.
    pub fn s3fs_for_bucket(&self, bucket: &str) -> Vec<i32> {
        self.daemon
            .s3fs_pids()
            .into_iter()
            .filter(|p| support::cmdline(*p).get(1).is_some_and(|b| b == bucket))
            .collect()
    }

    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.s3()
            .get(bucket, key)
            .unwrap_or_else(|e| panic!("S3 get {bucket}/{key}: {e}"))
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.s3()
            .list(bucket, None)
            .unwrap_or_else(|e| panic!("S3 list {bucket}: {e}"))
    }

    /// Waits until nothing of the daemon is mounted and no s3fs of it runs.
    pub fn wait_unmounted(&self) {
        support::wait_all_unmounted(&self.daemon);
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let ctrs = self
            .engine
            .cli(&["ps", "-aq", "--filter", &format!("label={}", self.label)]);
        let ids = lines(&stdout_of(&ctrs));
        if !ids.is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(ids.iter().map(String::as_str));
            let _ = self.engine.cli(&a);
        }
        for v in self.volumes.lock().unwrap().iter() {
            let o = self.engine.cli(&["volume", "rm", "-f", v]);
            if !o.status.success() && self.engine.cli(&["volume", "inspect", v]).status.success() {
                say(&format!(
                    "{}: WARNING: volume {v} could not be removed: {}",
                    self.test,
                    stderr_of(&o).trim()
                ));
            }
        }
        // The daemon (dropped next) checks that nothing of it is mounted any more.
        let _ = support::poll(Duration::from_secs(20), || {
            (self.daemon.mounts().is_empty() && self.daemon.s3fs_pids().is_empty()).then_some(())
        });
        say(&format!(
            "=== {} done in {:.1} s",
            self.test,
            self.started.elapsed().as_secs_f64()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

/// A volume is created, listed with the driver and inspected; the daemon has it with its bucket.
pub fn create_ls_inspect(c: &Case) {
    let bucket = c.bucket("inspect");
    let vol = c.volume_name("inspect");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);

    let ls = c
        .engine
        .ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        ls.lines()
            .any(|l| l.trim() == format!("{} {vol}", c.engine.driver)),
        "volume ls does not list {vol} with driver {}:\n{ls}",
        c.engine.driver
    );
    let raw = c.engine.ok(&["volume", "inspect", &vol]);
    let v: Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("volume inspect {vol}: not JSON ({e}): {raw}"));
    let v = &v[0];
    say(&format!("{} volume inspect {vol}: {v}", c.engine.what));
    assert_eq!(v["Name"], json!(vol), "{v}");
    assert_eq!(v["Driver"], json!(c.engine.driver), "{v}");
    // The engine shows what the daemon's Get says.
    let st = &v["Status"];
    assert_eq!(st["bucket"], json!(bucket), "{v}");
    assert_eq!(st["backend"], json!("default"), "{v}");
    assert_eq!(st["mounted"], json!(false), "{v}");
    assert!(
        c.daemon.list_names().contains(&vol),
        "the daemon does not list {vol}"
    );
    assert!(
        !raw.contains(&c.s3.secret_key),
        "volume inspect shows the secret key"
    );
}

/// A container writes into the volume; the object is in the bucket; the volume is unmounted
/// when the container is gone.
pub fn container_write_lands_in_bucket(c: &Case) {
    let bucket = c.bucket("write");
    let vol = c.volume_name("write");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    assert_eq!(c.object(&bucket, "f"), None);
    c.sh(&vol, "echo x > /data/f");
    assert_eq!(
        c.object(&bucket, "f").as_deref(),
        Some(&b"x\n"[..]),
        "object f after the container wrote it"
    );
    c.wait_unmounted();
}

/// Two containers on one volume share one s3fs; stopping one keeps the other's mount; the last
/// one leaving unmounts.
pub fn two_containers_share_one_s3fs(c: &Case) {
    let bucket = c.bucket("share");
    c.s3().put(&bucket, "seed.txt", b"seed\n").unwrap();
    let vol = c.volume_name("share");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    assert!(c.s3fs_for_bucket(&bucket).is_empty());

    let a = c.start_sleeper("share-a", &vol);
    let b = c.start_sleeper("share-b", &vol);
    for x in [&a, &b] {
        assert_eq!(c.exec(x, "cat /data/seed.txt"), "seed\n", "in {x}");
    }
    let pids = c.s3fs_for_bucket(&bucket);
    assert_eq!(pids.len(), 1, "expected one s3fs for {bucket}: {pids:?}");
    let st = c.status(&vol);
    say(&format!("two containers running: {st}"));
    let want = if c.engine.counts_holders_itself { 1 } else { 2 };
    assert_eq!(st["holders"], json!(want), "{st}");
    assert_eq!(st["mounted"], json!(true), "{st}");
    assert_eq!(st["health"], json!("ok"), "{st}");

    c.engine.ok(&["stop", "-t", "1", &a]);
    let st = c.status(&vol);
    assert_eq!(st["mounted"], json!(true), "after stopping {a}: {st}");
    assert_eq!(st["holders"], json!(1), "after stopping {a}: {st}");
    assert_eq!(c.exec(&b, "cat /data/seed.txt"), "seed\n");
    c.exec(&b, "echo from-b > /data/b.txt");
    assert_eq!(
        c.object(&bucket, "b.txt").as_deref(),
        Some(&b"from-b\n"[..])
    );
    assert_eq!(c.s3fs_for_bucket(&bucket), pids, "the s3fs changed");

    c.engine.ok(&["stop", "-t", "1", &b]);
    c.wait_unmounted();
    let st = c.status(&vol);
    assert_eq!(st["holders"], json!(0), "{st}");
    assert_eq!(st["mounted"], json!(false), "{st}");
}

/// A ro=true volume: reads work; writes fail with EROFS, root's too (the engine's own bind
/// remount may drop a per-mount read-only flag: only an s3fs mounted read-only holds), and the
/// bucket is unchanged.
pub fn read_only_refuses_writes(c: &Case) {
    let bucket = c.bucket("ro");
    c.s3().put(&bucket, "hello.txt", b"hello\n").unwrap();
    let vol = c.volume_name("ro");
    c.create_volume(&vol, &[&format!("bucket={bucket}"), "ro=true"]);
    assert_eq!(c.sh(&vol, "cat /data/hello.txt"), "hello\n");
    for (what, script) in [
        ("a new file", "id -u; echo y > /data/new.txt"),
        ("an overwrite", "id -u; echo y > /data/hello.txt"),
        ("a folder", "id -u; mkdir /data/dir"),
        ("a removal", "id -u; rm /data/hello.txt"),
    ] {
        let o = c.try_sh(&vol, script);
        let err = stderr_of(&o);
        say(&format!(
            "ro volume, {what} as uid {}: {} / {}",
            stdout_of(&o).trim(),
            o.status,
            err.trim()
        ));
        assert_eq!(stdout_of(&o).trim(), "0", "the container is not root");
        assert!(!o.status.success(), "{what} in a ro=true volume succeeded");
        assert!(
            err.contains("Read-only file system"),
            "{what} failed, but not with EROFS: {err}"
        );
    }
    assert_eq!(c.keys(&bucket), vec!["hello.txt".to_string()]);
    assert_eq!(
        c.object(&bucket, "hello.txt").as_deref(),
        Some(&b"hello\n"[..])
    );
    c.wait_unmounted();
}

/// A Create bai-s3 refuses fails the create command with bai-s3's message and leaves no volume
/// behind, in the engine or in the daemon.
pub fn refused_create_leaves_nothing(c: &Case) {
    let bucket = c.bucket("bad");
    let vol = c.volume_name("bad");
    let b = format!("bucket={bucket}");
    let o = c
        .engine
        .fails(&c.create_args(&vol, &[b.as_str(), "colour=blue"]));
    let err = stderr_of(&o);
    say(&format!(
        "{}: -o colour=blue: {}",
        c.engine.what,
        err.trim()
    ));
    assert!(err.contains("unknown volume option"), "{err}");
    assert!(err.contains("colour"), "{err}");

    let missing = e2e_name("missing");
    let vol2 = c.volume_name("missing");
    let m = format!("bucket={missing}");
    let o = c.engine.fails(&c.create_args(&vol2, &[m.as_str()]));
    let err = stderr_of(&o);
    say(&format!(
        "{}: missing bucket: {}",
        c.engine.what,
        err.trim()
    ));
    assert!(
        err.contains("does not exist") && err.contains(&missing),
        "{err}"
    );

    let names = c.engine.volume_names();
    assert!(
        !names.contains(&vol) && !names.contains(&vol2),
        "a refused volume is listed: {names:?}"
    );
    let known = c.daemon.list_names();
    assert!(
        !known.contains(&vol) && !known.contains(&vol2),
        "the daemon keeps a refused volume: {known:?}"
    );
    assert!(
        !c.s3().bucket_exists(&missing).unwrap(),
        "a bucket was made"
    );
}

/// A Mount bai-s3 refuses (the volume's backend left the backends file) fails the container's
/// start with bai-s3's message; the container never runs and nothing is mounted.
pub fn refused_mount_never_starts(c: &Case) {
    let bucket = c.bucket("gone");
    let vol = c.volume_name("gone");
    c.daemon
        .write_backends(&[c.s3.backend("default"), c.s3.backend("leaving")]);
    // The daemon reads the file again on its own; Create with the new backend works once it has.
    let b = format!("bucket={bucket}");
    let args = c.create_args(&vol, &[b.as_str(), "backend=leaving"]);
    support::wait_for(
        "the daemon to know backend \"leaving\"",
        Duration::from_secs(20),
        || c.engine.cli(&args).status.success().then_some(()),
    );
    c.daemon.write_backends(&[c.s3.backend("default")]);
    support::wait_for(
        "the daemon to see that backend \"leaving\" is gone",
        Duration::from_secs(20),
        || c.status(&vol)["problem"].is_string().then_some(()),
    );

    let name = c.create_container("never", &vol, &["sh", "-c", "echo ran > /data/ran"]);
    let o = c.engine.fails(&["start", &name]);
    let err = stderr_of(&o);
    say(&format!(
        "{}: start with a refused Mount: {}",
        c.engine.what,
        err.trim()
    ));
    assert!(
        err.contains("backend \"leaving\" is not configured"),
        "the start failed, but without bai-s3's message: {err}"
    );
    c.assert_never_started(&name);
    assert_eq!(c.object(&bucket, "ran"), None, "the container ran");
    assert!(c.daemon.mounts().is_empty() && c.s3fs_for_bucket(&bucket).is_empty());
    let st = c.status(&vol);
    assert_eq!(st["holders"], json!(0), "{st}");
}

/// `volume rm` removes the volume and keeps every object of the bucket.
pub fn volume_rm_keeps_objects(c: &Case) {
    let bucket = c.bucket("rm");
    c.s3().put(&bucket, "keep/me.txt", b"keep\n").unwrap();
    let vol = c.volume_name("rm");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    c.sh(&vol, "echo written > /data/written.txt");
    c.wait_unmounted();
    let before = c.keys(&bucket);
    assert_eq!(
        before,
        vec!["keep/me.txt".to_string(), "written.txt".to_string()]
    );
    assert_eq!(c.engine.ok(&["volume", "rm", &vol]).trim(), vol);
    assert!(
        !c.engine.volume_names().contains(&vol),
        "{vol} still listed"
    );
    assert!(
        !c.daemon.list_names().contains(&vol),
        "the daemon still has {vol}"
    );
    assert_eq!(c.keys(&bucket), before, "volume rm changed the bucket");
}

/// The daemon stops and starts again under a running container: the container's mount works
/// all along (promise 2), and its stop unmounts through the new daemon.
pub fn daemon_restart_under_running_container(c: &mut Case) {
    let bucket = c.bucket("restart");
    let vol = c.volume_name("restart");
    c.create_volume(&vol, &[&format!("bucket={bucket}")]);
    let ctr = c.start_sleeper("restart", &vol);
    c.exec(&ctr, "echo before > /data/before.txt");
    let pids = c.s3fs_for_bucket(&bucket);
    assert_eq!(pids.len(), 1, "{pids:?}");

    let took = c.daemon.terminate(Duration::from_secs(30));
    assert!(
        took.is_some(),
        "the daemon did not exit on SIGTERM within 30 s"
    );
    assert_eq!(
        c.exec(&ctr, "cat /data/before.txt"),
        "before\n",
        "daemon down"
    );
    c.exec(&ctr, "echo during > /data/during.txt");
    c.daemon.restart();
    assert_eq!(c.s3fs_for_bucket(&bucket), pids, "the s3fs changed");
    let st = c.status(&vol);
    say(&format!("after the daemon's restart: {st}"));
    assert_eq!(st["mounted"], json!(true), "{st}");
    assert_eq!(st["holders"], json!(1), "{st}");
    c.exec(&ctr, "echo after > /data/after.txt");
    for k in ["before", "during", "after"] {
        assert_eq!(
            c.object(&bucket, &format!("{k}.txt")),
            Some(format!("{k}\n").into_bytes())
        );
    }
    c.engine.ok(&["stop", "-t", "1", &ctr]);
    c.wait_unmounted();
}

// ---------------------------------------------------------------------------------------------
// Podman
// ---------------------------------------------------------------------------------------------

/// Where Podman keeps its images and containers for the tests (vfs), kept between runs so that
/// the image is imported once.
const PODMAN_GRAPHROOT: &str = "/var/cache/bai-s3-test/podman";
/// Podman's run-time state (on /run: gone at reboot, as Podman expects).
const PODMAN_RUNROOT: &str = "/run/bai-s3-test-podman";

/// What an engine's tests need (empty when nothing): root, `tools` on PATH (installed by
/// `scripts/deps.sh GROUP`), busybox for the image, SeaweedFS, FUSE.
pub(super) fn missing(tools: &[&str], group: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("not running as root".to_string());
    }
    for tool in tools {
        if !support::on_path(tool) {
            missing.push(format!("'{tool}' is not on PATH (scripts/deps.sh {group})"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push(format!(
            "busybox-static is not installed (scripts/deps.sh {group})"
        ));
    }
    if !support::weed_bin().is_file() {
        missing.push(format!(
            "{} is missing (scripts/deps.sh)",
            support::weed_bin().display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing".to_string());
    }
    missing
}

/// What the Podman tests need (empty when nothing).
pub fn podman_missing() -> Vec<String> {
    missing(&["podman", "runc", "s3fs", "tar", "chroot"], "podman")
}

/// The socket Podman's containers.conf names for bai-s3; each test's daemon listens there
/// (through a symlink to its own socket).
fn podman_socket_link() -> PathBuf {
    PathBuf::from(PODMAN_RUNROOT).join("bai-s3.sock")
}

/// Podman with its own containers.conf and storage.conf (vfs, its own graphroot and runroot),
/// runc and cgroupfs (crun refuses these machines' hybrid cgroups), rlimits it may set,
/// `--network none`, and bai-s3 named under `[engine.volume_plugins]`; the busybox image
/// imported when missing. Leftovers of an earlier run in this storage are removed.
pub fn podman() -> Result<Engine, String> {
    let conf_dir = PathBuf::from(PODMAN_RUNROOT).join("conf");
    fs::create_dir_all(&conf_dir).map_err(|e| format!("mkdir {}: {e}", conf_dir.display()))?;
    fs::create_dir_all(PODMAN_GRAPHROOT).map_err(|e| format!("mkdir {PODMAN_GRAPHROOT}: {e}"))?;
    for d in [PODMAN_RUNROOT, PODMAN_GRAPHROOT] {
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o700));
    }
    let containers_conf = conf_dir.join("containers.conf");
    let storage_conf = conf_dir.join("storage.conf");
    fs::write(
        &containers_conf,
        format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             \n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"none\"\n\
             tmp_dir = \"{run}/tmp\"\n\
             \n\
             [engine.volume_plugins]\n\
             bai-s3 = \"{sock}\"\n",
            run = PODMAN_RUNROOT,
            sock = podman_socket_link().display()
        ),
    )
    .map_err(|e| format!("write {}: {e}", containers_conf.display()))?;
    fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{PODMAN_RUNROOT}/storage\"\ngraphroot = \"{PODMAN_GRAPHROOT}\"\n"
        ),
    )
    .map_err(|e| format!("write {}: {e}", storage_conf.display()))?;
    let version = Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| text(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let engine = Engine {
        what: version.replace("podman version", "Podman"),
        program: "podman".into(),
        pre_args: Vec::new(),
        envs: vec![
            ("CONTAINERS_CONF".into(), containers_conf.into()),
            ("CONTAINERS_STORAGE_CONF".into(), storage_conf.into()),
        ],
        run_args: vec!["--network".into(), "none".into()],
        driver: "bai-s3".into(),
        counts_holders_itself: true,
        exec_by_nsenter: false,
    };
    // An earlier run's containers and volumes (this storage is the tests' alone).
    let _ = engine.cli(&["rm", "-af"]);
    for v in engine.volume_names() {
        if v.starts_with(super::NAME_PREFIX) {
            let _ = engine.cli(&["volume", "rm", "-f", &v]);
        }
    }
    let have = engine.cli(&[
        "image",
        "inspect",
        "-f",
        "{{index .Labels \"bai-s3-test-image-layout\"}}",
        IMAGE,
    ]);
    if !(have.status.success() && stdout_of(&have).trim() == super::IMAGE_LAYOUT) {
        super::import_image(&engine.shell_words())?;
        say(&format!("podman: imported {IMAGE}"));
    }
    Ok(engine)
}

/// This test's daemon for Podman: a legacy install on the host, reached through the socket
/// path containers.conf names (a symlink to the daemon's own socket).
pub fn podman_daemon(s3: &'static S3Server) -> Daemon {
    podman_daemon_with(s3, &[s3.backend("default")], &[])
}

pub fn podman_daemon_with(
    _s3: &'static S3Server,
    backends: &[support::Backend],
    extra: &[&str],
) -> Daemon {
    let d = Daemon::start_with(backends, extra);
    let link = podman_socket_link();
    let tmp = link.with_extension("sock.new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&d.socket, &tmp).expect("symlink the daemon's socket");
    fs::rename(&tmp, &link).expect("rename the socket link");
    d
}

// ---------------------------------------------------------------------------------------------
// Docker Engine 26 (Debian 13's docker.io) in a Debian 13 root
// ---------------------------------------------------------------------------------------------

/// The Debian 13 root scripts/trixie-root.sh makes and keeps.
pub fn trixie_root() -> PathBuf {
    std::env::var_os("BAI_S3_TRIXIE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bai-s3-test/trixie"))
}

/// dockerd 26's API socket, inside the root (`-H unix:///run/docker26.sock`).
const D26_SOCK: &str = "run/docker26.sock";
const D26_PID: &str = "run/docker26.pid";
const D26_DATA: &str = "var/lib/docker26";
const D26_LOG: &str = "var/log/docker26.log";

/// What the Docker Engine 26 tests need (empty when nothing).
pub fn docker26_missing() -> Vec<String> {
    missing(
        &[
            "docker",
            "debootstrap",
            "chroot",
            "mount",
            "umount",
            "unshare",
            "nsenter",
            "tar",
        ],
        "docker",
    )
}

fn sh(what: &str, cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let o = run_with_timeout(cmd, timeout);
    if !o.status.success() {
        return Err(format!(
            "{what}: {}\n{}{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        ));
    }
    Ok(text(&o.stdout))
}

/// The pid of the dockerd 26 an earlier run started, proven by the kernel: the pid file in the
/// root names it and its exe is the root's dockerd.
fn docker26_pid(root: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(root.join(D26_PID))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (exe == root.join("usr/sbin/dockerd") && support::process_alive(pid)).then_some(pid)
}

fn stop_docker26(root: &Path) {
    if let Some(pid) = docker26_pid(root) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = support::poll(Duration::from_secs(60), || {
            (!support::process_alive(pid)).then_some(())
        });
    }
}

/// Unmounts everything at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let mut m = support::mounts_under(dir);
    m.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
    for e in m {
        let _ = nix::mount::umount2(&e.mount_point, nix::mount::MntFlags::MNT_DETACH);
    }
}

static D26_ROOT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn docker26_teardown() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(root) = D26_ROOT.get() {
            stop_docker26(root);
            unmount_below(root);
            say("docker26: dockerd stopped, the root's mounts undone");
        }
    });
}

/// Docker Engine 26 from the Debian 13 root (made by scripts/trixie-root.sh when missing):
/// the root bound on itself (dockerd's archive code needs `/` to be a mount point), /proc, /sys
/// and /dev in it, and `DOCKER_RAMDISK=true chroot ROOT dockerd ...` in a network namespace of
/// its own (it never touches the host dockerd's docker0; its containers run with
/// `--network none`), with a fresh data root each run. The host's docker CLI drives it. Stopped,
/// and the mounts undone, when the test process exits.
pub fn docker26() -> Result<Engine, String> {
    let t0 = Instant::now();
    let out = sh(
        "scripts/trixie-root.sh",
        Command::new(support::repo().join("scripts/trixie-root.sh"))
            .env("BAI_S3_TRIXIE_ROOT", trixie_root()),
        Duration::from_secs(1800),
    )?;
    let root = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    if !root.join("usr/sbin/dockerd").is_file() {
        return Err(format!(
            "scripts/trixie-root.sh made no dockerd in {}",
            root.display()
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    // An earlier run killed in the middle: its dockerd and mounts.
    stop_docker26(&root);
    unmount_below(&root);
    let data = root.join(D26_DATA);
    if data.exists() {
        fs::remove_dir_all(&data).map_err(|e| format!("rm -r {}: {e}", data.display()))?;
    }
    fs::create_dir_all(&data).map_err(|e| format!("mkdir {}: {e}", data.display()))?;
    fs::create_dir_all(root.join("run/docker/plugins")).map_err(|e| e.to_string())?;
    let r = root.to_str().ok_or("root path is not UTF-8")?;
    for (what, args) in [
        ("bind the root on itself", vec!["--rbind", r, r]),
        (
            "mount /proc",
            vec!["-t", "proc", "proc", &format!("{r}/proc")],
        ),
        ("bind /sys", vec!["--rbind", "/sys", &format!("{r}/sys")]),
        ("bind /dev", vec!["--rbind", "/dev", &format!("{r}/dev")]),
    ] {
        sh(
            what,
            Command::new("mount").args(&args),
            Duration::from_secs(30),
        )?;
    }
    let _ = D26_ROOT.set(root.clone());
    // SAFETY: registering a plain extern "C" function that catches its own panics.
    unsafe {
        super::atexit(docker26_teardown);
    }
    let log = fs::File::create(root.join(D26_LOG)).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "chroot", r, "dockerd"])
        .args([
            "--data-root",
            "/var/lib/docker26",
            "--exec-root",
            "/run/docker26",
        ])
        .args([
            "-H",
            "unix:///run/docker26.sock",
            "--pidfile",
            "/run/docker26.pid",
        ])
        .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DOCKER_RAMDISK", "true")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid and close. The new
    // session keeps dockerd out of the test's signals; the closed descriptors keep it from
    // holding what the test process inherited (a flock of the Docker tests' lock file above
    // all, which a long-lived dockerd would hold forever).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::libc::setsid();
            for fd in 3..1024 {
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("start dockerd 26: {e}"))?;
    let sock = format!("unix://{}", root.join(D26_SOCK).display());
    let answers = || {
        Command::new("timeout")
            .args(["5", "docker", "-H", &sock, "version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let up = support::poll(Duration::from_secs(90), || {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(Err(format!("dockerd exited: {st}")));
        }
        answers().then_some(Ok(()))
    });
    // Reaped by the test process when it exits (dockerd is stopped by then).
    std::mem::forget(child);
    match up {
        Some(Ok(())) => {}
        other => {
            let log = fs::read_to_string(root.join(D26_LOG)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            return Err(format!(
                "dockerd 26 did not answer on {sock} ({other:?}); its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    let version = sh(
        "docker version",
        Command::new("docker").args(["-H", &sock, "version", "-f", "{{.Server.Version}}"]),
        Duration::from_secs(30),
    )?;
    let engine = Engine {
        what: format!("Docker Engine {} (Debian 13 root)", version.trim()),
        program: "docker".into(),
        pre_args: vec!["-H".into(), sock],
        envs: Vec::new(),
        run_args: vec!["--network".into(), "none".into()],
        driver: "bai-s3".into(),
        counts_holders_itself: false,
        exec_by_nsenter: true,
    };
    super::import_image(&engine.shell_words())?;
    say(&format!(
        "docker26: {} answering, {IMAGE} imported, in {:.1} s",
        engine.what,
        t0.elapsed().as_secs_f64()
    ));
    Ok(engine)
}

/// This test's daemon for dockerd 26: `bai-s3 serve` run chrooted in the Debian 13 root (its
/// s3fs 1.95), found by dockerd as a legacy plugin at /run/docker/plugins/bai-s3.sock inside
/// the root (a symlink to the daemon's own socket).
pub fn docker26_daemon(s3: &'static S3Server) -> Daemon {
    docker26_daemon_with(s3, &[s3.backend("default")], &[])
}

pub fn docker26_daemon_with(
    _s3: &'static S3Server,
    backends: &[support::Backend],
    extra: &[&str],
) -> Daemon {
    let root = D26_ROOT.get().expect("dockerd 26 is set up first");
    let d = Daemon::start_in_root(root, backends, extra);
    let link = root.join("run/docker/plugins/bai-s3.sock");
    let tmp = link.with_extension("sock.new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(d.inside(&d.socket), &tmp).expect("symlink the daemon's socket");
    fs::rename(&tmp, &link).expect("rename the socket link");
    d
}

/// A TCP forwarder from `127.0.0.1:PORT` inside dockerd 26's network namespace to `upstream`
/// (`host:port` in the test's own): what a managed plugin on dockerd 26's "host" network
/// reaches the test's SeaweedFS through. Returns `http://127.0.0.1:PORT`. Lives as long as the
/// test process.
pub fn bridge_into_docker26(upstream: &str) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    let root = D26_ROOT.get().expect("dockerd 26 is set up first");
    let pid = docker26_pid(root).expect("dockerd 26 runs");
    let pid_s = pid.to_string();
    sh(
        "bring lo up in dockerd 26's network namespace",
        Command::new("nsenter").args(["-t", &pid_s, "-n", "ip", "link", "set", "lo", "up"]),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A thread of its own enters the namespace and binds there; the socket stays in that
    // namespace when the thread ends. Everything else runs in the test's namespace.
    let listener = std::thread::spawn(move || {
        let ns = fs::File::open(format!("/proc/{pid}/ns/net")).expect("open the netns");
        // SAFETY: setns on a valid descriptor changes only this thread's network namespace.
        let r = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        TcpListener::bind("127.0.0.1:0").expect("bind in dockerd 26's netns")
    })
    .join()
    .expect("the netns thread");
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// The Debian 13 root dockerd 26 runs in.
pub fn docker26_root() -> &'static Path {
    D26_ROOT.get().expect("dockerd 26 is set up first")
}
