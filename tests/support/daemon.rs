//! The daemon under test: one `bai-s3 serve` in a temporary directory, its backends file, the
//! calls tests make to it, and the helpers shared by the daemon tests.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::*;

#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn backends_toml(backends: &[Backend]) -> String {
    let mut s = String::new();
    for b in backends {
        s.push_str(&format!(
            "[backends.{}]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess-key = \"{}\"\nsecret-key = \"{}\"\npath-style = true\n\n",
            b.name, b.endpoint, b.access_key, b.secret_key
        ));
    }
    s
}

/// Writes `content` to `path` atomically with mode 0600.
pub fn write_private_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-write");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.sync_all().unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// `bai-s3 serve` on these folders, its settings from its flags only (none from the developer's
/// environment: no `BAI_S3_*`, no `RUST_LOG`).
pub fn serve_command(socket: &Path, state_dir: &Path, mount_root: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--mount-root")
        .arg(mount_root)
        .arg("--config")
        .arg(config);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BAI_S3_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// One `bai-s3 serve` with its own socket, state dir, mount root and backends file, all in a
/// temporary directory. Drop stops it and removes every mount and s3fs it left, then checks that
/// nothing is left (and, unless told otherwise, that the test itself left no s3fs or mount).
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub mount_root: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub(super) extra_args: Vec<String>,
    pub(super) child: Option<Child>,
    pub(super) tmp: Option<tempfile::TempDir>,
    /// When true (the default), Drop fails the test if s3fs processes or mounts of this daemon
    /// are still there when the test ends (every test is expected to unmount what it mounted).
    pub expect_clean_end: bool,
    /// A root the daemon runs chrooted in (another distribution's, with its own s3fs, for an
    /// engine that runs there too); the paths above are the host's, its argv has them as seen
    /// inside.
    pub(super) chroot: Option<PathBuf>,
}

impl Daemon {
    /// A daemon whose backend "default" is `s3`.
    pub fn start(s3: &S3Server) -> Daemon {
        Daemon::start_with(&[s3.backend("default")], &[])
    }

    pub fn start_with(backends: &[Backend], extra_args: &[&str]) -> Daemon {
        Daemon::start_rooted(None, backends, extra_args)
    }

    /// A daemon run by `chroot ROOT` (the test binary's bai-s3 copied to ROOT/usr/local/bin),
    /// its folder in ROOT/tmp: its s3fs is the root's, and the Mountpoints it answers are paths
    /// inside ROOT, as an engine running there needs them.
    pub fn start_in_root(root: &Path, backends: &[Backend], extra_args: &[&str]) -> Daemon {
        Daemon::start_rooted(Some(root), backends, extra_args)
    }

    fn start_rooted(root: Option<&Path>, backends: &[Backend], extra_args: &[&str]) -> Daemon {
        let mut b = tempfile::Builder::new();
        b.prefix(TEST_DIR_PREFIX);
        let tmp = match root {
            Some(r) => {
                let bin = r.join("usr/local/bin/bai-s3");
                let _ = fs::remove_file(&bin);
                fs::copy(daemon_bin(), &bin)
                    .unwrap_or_else(|e| panic!("copy the daemon into {}: {e}", r.display()));
                b.tempdir_in(r.join("tmp"))
            }
            None => b.tempdir(),
        }
        .expect("tempdir");
        let dir = tmp.path().canonicalize().unwrap();
        let d = Daemon {
            socket: dir.join("bai-s3.sock"),
            state_dir: dir.join("state"),
            mount_root: dir.join("volumes"),
            config: dir.join("backends.toml"),
            log: dir.join("daemon.log"),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            tmp: Some(tmp),
            expect_clean_end: true,
            chroot: root.map(Path::to_path_buf),
        };
        // Root-only, as the daemon requires of them at start (it refuses open ones).
        for dir in [&d.state_dir, &d.mount_root] {
            fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
        }
        d.write_backends(backends);
        let mut d = d;
        d.spawn();
        d
    }

    /// Rewrites the backends file (atomically, mode 0600).
    pub fn write_backends(&self, backends: &[Backend]) {
        write_private_file(&self.config, &backends_toml(backends));
    }

    /// Rewrites the backends file (atomically) with the given mode.
    pub fn write_backends_with_mode(&self, backends: &[Backend], mode: u32) {
        write_private_file(&self.config, &backends_toml(backends));
        fs::set_permissions(&self.config, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the daemon; Err (with its log) when it exits before it listens.
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "daemon already running");
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = writeln!(&logf, "===== test harness: starting bai-s3 serve =====");
        let mut cmd = serve_command(
            &self.inside(&self.socket),
            &self.inside(&self.state_dir),
            &self.inside(&self.mount_root),
            &self.inside(&self.config),
        );
        if let Some(root) = &self.chroot {
            let inner = cmd;
            cmd = Command::new("chroot");
            cmd.arg(root)
                .arg("/usr/local/bin/bai-s3")
                .args(inner.get_args());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
        }
        cmd.arg("--mount-timeout")
            .arg("20")
            .arg("--unmount-delay")
            .arg("0")
            .arg("--log-level")
            .arg("trace")
            .arg("--log-format")
            .arg("text")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        // Safety net if the test process dies without running Drop. (The daemon is spawned and
        // dropped by the same test thread, so the thread-scoped parent-death signal is right.)
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", daemon_bin().display()));
        self.child = Some(child);
        self.wait_listening()
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "bai-s3 serve exited ({st}) before listening on {}\n{}",
                    self.socket.display(),
                    self.logs_tail(80)
                ));
            }
            if Instant::now() >= deadline {
                panic!(
                    "bai-s3 serve not listening on {} after 20 s\n{}",
                    self.socket.display(),
                    self.logs_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL the daemon (its s3fs children are left alone) and reap it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("daemon not running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Start the daemon again with the same dirs and flags (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Like `restart`, but Err (with the daemon's log) when it exits instead of listening.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.try_spawn()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }

    /// SIGTERM; waits up to `timeout` for the exit (then SIGKILL). Returns how long the exit
    /// took, or None when the daemon had to be killed (or was not running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<Duration> {
        let mut c = self.child.take()?;
        let t = Instant::now();
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        match poll(timeout, || c.try_wait().ok().flatten()) {
            Some(_) => Some(t.elapsed()),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                None
            }
        }
    }

    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of the daemon's log, without the S3 SDK's and hyper's own trace lines
    /// (the whole log stays in the file).
    pub fn logs_tail(&self, n: usize) -> String {
        const NOISE: &[&str] = &[
            "aws_smithy",
            "aws_sdk_s3::",
            "aws_runtime::",
            "hyper_util::",
            "hyper::",
        ];
        let s = self.logs();
        let lines: Vec<&str> = s
            .lines()
            .filter(|l| !NOISE.iter().any(|w| l.contains(w)))
            .collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "--- daemon log ({}, SDK trace left out) ---\n{}",
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    pub fn mountpoint_of(&self, volume: &str) -> PathBuf {
        self.mount_root.join(volume)
    }

    /// `path` (one of this daemon's) as the daemon sees it: inside its chroot, if any.
    pub fn inside(&self, path: &Path) -> PathBuf {
        match &self.chroot {
            Some(root) => Path::new("/").join(path.strip_prefix(root).unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// Live s3fs processes whose command line mentions this daemon's mount root.
    pub fn s3fs_pids(&self) -> Vec<i32> {
        s3fs_pids_mentioning(&self.inside(&self.mount_root))
    }

    /// Mounts below this daemon's mount root (the volumes' mounts; the root itself is left out,
    /// a daemon may make it a mount of its own for propagation).
    pub fn mounts(&self) -> Vec<MountEntry> {
        mounts_under(&self.mount_root)
            .into_iter()
            .filter(|m| m.mount_point != self.mount_root)
            .collect()
    }

    /// Every mount in this daemon's temporary directory (mount root, state dir...).
    pub fn all_mounts(&self) -> Vec<MountEntry> {
        mounts_under(&self.dir)
    }

    /// Live s3fs processes mentioning anything in this daemon's temporary directory.
    pub(super) fn all_s3fs_pids(&self) -> Vec<i32> {
        s3fs_pids_mentioning(&self.inside(&self.dir))
    }

    // --- the protocol, as dockerd speaks it ---

    pub fn call(&self, method: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        plugin_call(&self.socket, method, &body).unwrap_or_else(|e| {
            panic!(
                "{method} on {}: {e}\n{}",
                self.socket.display(),
                self.logs_tail(40)
            )
        })
    }

    pub fn activate(&self) -> (u16, Value) {
        plugin_call(&self.socket, "Plugin.Activate", "")
            .unwrap_or_else(|e| panic!("Plugin.Activate: {e}\n{}", self.logs_tail(40)))
    }

    pub fn create(&self, name: &str, opts: &[(&str, &str)]) -> Result<(), String> {
        let opts: serde_json::Map<String, Value> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let (st, v) = self.call("VolumeDriver.Create", &json!({"Name": name, "Opts": opts}));
        result_of(st, &v).map(|_| ())
    }

    pub fn remove(&self, name: &str) -> Result<(), String> {
        let (st, v) = self.call("VolumeDriver.Remove", &json!({"Name": name}));
        result_of(st, &v).map(|_| ())
    }

    pub fn mount(&self, name: &str, id: &str) -> Result<PathBuf, String> {
        let (st, v) = self.call("VolumeDriver.Mount", &json!({"Name": name, "ID": id}));
        let v = result_of(st, &v)?;
        match v.get("Mountpoint").and_then(Value::as_str) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(format!("Mount answered success without a Mountpoint: {v}")),
        }
    }

    pub fn unmount(&self, name: &str, id: &str) -> Result<(), String> {
        let (st, v) = self.call("VolumeDriver.Unmount", &json!({"Name": name, "ID": id}));
        result_of(st, &v).map(|_| ())
    }

    pub fn path(&self, name: &str) -> Result<PathBuf, String> {
        let (st, v) = self.call("VolumeDriver.Path", &json!({"Name": name}));
        let v = result_of(st, &v)?;
        Ok(PathBuf::from(
            v.get("Mountpoint")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ))
    }

    /// The `Volume` object of Get.
    pub fn get(&self, name: &str) -> Result<Value, String> {
        let (st, v) = self.call("VolumeDriver.Get", &json!({"Name": name}));
        let v = result_of(st, &v)?;
        match v.get("Volume") {
            Some(vol) if vol.is_object() => Ok(vol.clone()),
            _ => Err(format!("Get answered success without a Volume: {v}")),
        }
    }

    /// The `Status` of Get.
    pub fn status(&self, name: &str) -> Result<Value, String> {
        let vol = self.get(name)?;
        Ok(vol.get("Status").cloned().unwrap_or(Value::Null))
    }

    /// The `Volumes` of List.
    pub fn list(&self) -> Result<Vec<Value>, String> {
        let (st, v) = self.call("VolumeDriver.List", &json!({}));
        let v = result_of(st, &v)?;
        match v.get("Volumes") {
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(other) => Err(format!("List: Volumes is not an array: {other}")),
        }
    }

    pub fn list_names(&self) -> Vec<String> {
        self.list()
            .unwrap_or_else(|e| panic!("List failed: {e}"))
            .iter()
            .filter_map(|v| v.get("Name").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    pub fn capabilities(&self) -> (u16, Value) {
        self.call("VolumeDriver.Capabilities", &json!({}))
    }
}

// ---------------------------------------------------------------------------------------------
// Test helpers shared by the integration tests (setup, create, mount, status)
// ---------------------------------------------------------------------------------------------

/// Prerequisites, the shared S3 server and a fresh daemon whose backend "default" is it.
pub fn setup(test: &str) -> Option<(&'static S3Server, Daemon)> {
    setup_with(test, &[])
}

/// Like `setup`, with `extra` flags for the daemon (given last, so they override its defaults).
pub fn setup_with(test: &str, extra: &[&str]) -> Option<(&'static S3Server, Daemon)> {
    if !prereqs(test) {
        return None;
    }
    let s3 = shared_s3();
    let d = Daemon::start_with(&[s3.backend("default")], extra);
    Some((s3, d))
}

/// A new bucket with a unique name, so that tests sharing one S3 server never meet.
pub fn new_bucket(s3: &S3Server, tag: &str) -> String {
    let b = unique_name(tag);
    s3.s3()
        .create_bucket(&b)
        .unwrap_or_else(|e| panic!("create bucket {b}: {e}"));
    b
}

/// A mount ID like Docker's (64 hex digits).
pub fn new_id() -> String {
    random_hex(32)
}

/// Create that must succeed; the panic carries the daemon's log.
pub fn create_ok(d: &Daemon, vol: &str, opts: &[(&str, &str)]) {
    d.create(vol, opts)
        .unwrap_or_else(|e| panic!("Create {vol} {opts:?} failed: {e}\n{}", d.logs_tail(40)));
}

/// Mount that must succeed, at `<mount-root>/<vol>`, with something mounted there; the panic
/// carries the daemon's log. Returns the mount point.
pub fn mount_ok(d: &Daemon, vol: &str, id: &str) -> PathBuf {
    let mp = d
        .mount(vol, id)
        .unwrap_or_else(|e| panic!("Mount {vol} (ID {id}) failed: {e}\n{}", d.logs_tail(60)));
    assert_eq!(
        mp,
        d.mountpoint_of(vol),
        "Mountpoint of {vol} is not <mount-root>/{vol}"
    );
    assert!(
        is_mountpoint(&mp),
        "Mount of {vol} answered {} but nothing is mounted there",
        mp.display()
    );
    mp
}

/// Unmount that must succeed; the panic carries the daemon's log.
pub fn unmount_ok(d: &Daemon, vol: &str, id: &str) {
    d.unmount(vol, id)
        .unwrap_or_else(|e| panic!("Unmount {vol} (ID {id}) failed: {e}\n{}", d.logs_tail(60)));
}

/// The `Status` of a volume's Get, which must succeed; the panic carries the daemon's log.
pub fn status(d: &Daemon, vol: &str) -> Value {
    d.status(vol)
        .unwrap_or_else(|e| panic!("Get {vol} failed: {e}\n{}", d.logs_tail(40)))
}

/// `holders` of a Status, which must be a number.
pub fn holders(st: &Value) -> u64 {
    st.get("holders")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("Status has no numeric \"holders\": {st}"))
}

/// `mounted` of a Status, which must be a boolean.
pub fn mounted(st: &Value) -> bool {
    st.get("mounted")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("Status has no boolean \"mounted\": {st}"))
}

/// `health` of a Status, which must be a string.
pub fn health(st: &Value) -> String {
    st.get("health")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("Status has no string \"health\": {st}"))
        .to_string()
}
