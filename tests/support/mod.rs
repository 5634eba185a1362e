//! Shared support for bai-s3's integration tests: a real SeaweedFS, a real `bai-s3 serve`, a
//! plugin-protocol client speaking as dockerd does, and process/mount inspection.
//!
//! Every test binary under `tests/` starts with `mod support;`. Not every binary uses every
//! helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod stall;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Prerequisites, polling, names
// ---------------------------------------------------------------------------------------------

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn weed_bin() -> PathBuf {
    repo().join(".venv/bin/weed")
}

pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bai-s3"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Writes straight to the process's stderr, bypassing the test harness's output capture, so that
/// SKIP lines are seen even for tests that pass.
pub fn say(line: &str) {
    let mut e = io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// What the daemon tests need on the machine. Returns true when the test can run. When something
/// is missing: under `CI=true` this panics (a missing prerequisite is a failure there); otherwise
/// it prints a SKIP line and returns false, and the test returns early.
pub fn prereqs(test: &str) -> bool {
    let mut missing = Vec::new();
    if !on_path("s3fs") {
        missing.push("s3fs is not on PATH (scripts/deps.sh installs it)".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing".to_string());
    }
    if !weed_bin().is_file() {
        missing.push(format!(
            "{} is missing (scripts/deps.sh installs it)",
            weed_bin().display()
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("not running as root (s3fs mounts and umount need it)".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!(
            "{test}: missing prerequisites under CI=true: {}",
            missing.join("; ")
        );
    }
    say(&format!("SKIP {test}: {}", missing.join("; ")));
    false
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, &mut f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` until it returns Some or `timeout` passes (then None).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

pub fn random_hex(n_bytes: usize) -> String {
    random_bytes(n_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key string that is easy to search for (letters and digits only).
fn random_key(len: usize) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(len)
        .iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

/// A name unique to this test process and call, valid both as a Docker volume name and as an S3
/// bucket name: lowercase letters, digits and '-', 3..=63 characters, starting with a letter.
pub fn unique_name(tag: &str) -> String {
    unique_name_with("t-", tag, 30)
}

/// [`unique_name`] with its own `prefix` (by which a suite finds its leftovers) and at most
/// `tag_len` characters of `tag`.
pub fn unique_name_with(prefix: &str, tag: &str, tag_len: usize) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(tag_len)
        .collect();
    let name = format!(
        "{prefix}{tag}-{:x}-{n}-{}",
        std::process::id(),
        random_hex(2)
    );
    assert!(name.len() <= 63, "unique name too long: {name}");
    name
}

// ---------------------------------------------------------------------------------------------
// SeaweedFS
// ---------------------------------------------------------------------------------------------

/// Four TCP ports for weed (s3, master, volume, filer), each below 55536 and each with port+10000
/// also free (weed listens there for gRPC).
fn pick_ports() -> [u16; 4] {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < 4 {
        tries += 1;
        assert!(tries < 10_000, "could not find free ports for SeaweedFS");
        let r = u16::from_le_bytes(random_bytes(2).try_into().unwrap());
        let p = 20_000 + (r % 25_000); // 20000..45000, so p+10000 < 55536
        if ports.contains(&p)
            || ports
                .iter()
                .any(|q: &u16| *q + 10_000 == p || p + 10_000 == *q)
        {
            continue;
        }
        if free(p) && free(p + 10_000) {
            ports.push(p);
        }
    }
    [ports[0], ports[1], ports[2], ports[3]]
}

/// Removes the unix sockets a killed weed leaves in /tmp for these ports ("all filers failed").
fn remove_stale_weed_sockets(ports: &[u16]) {
    let Ok(rd) = fs::read_dir("/tmp") else { return };
    let suffixes: Vec<String> = ports
        .iter()
        .flat_map(|p| [format!("-{p}.sock"), format!("-{}.sock", p + 10_000)])
        .collect();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("seaweedfs-") && suffixes.iter().any(|s| name.ends_with(s)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The shell that runs weed and kills it when its stdin (a pipe held by the test process)
/// reaches end of file, which happens when the test process exits however it exits. A static is
/// never dropped, so this is what keeps a shared server from outliving its test binary.
/// Arguments: weed binary, pid file, directory to remove afterwards ("" for none), weed args.
const WATCHDOG: &str = r#"W="$1"; P="$2"; C="$3"; shift 3
"$W" server "$@" </dev/null &
w=$!
echo "$w" > "$P"
# Only the end of stdin stops weed: a Ctrl-C or a signal to the process group must not kill this
# shell and leave weed behind (weed itself ignores SIGINT as a background job).
trap '' INT TERM HUP QUIT
live() { [ -r /proc/$w/stat ] && ! grep -q ') [ZX] ' /proc/$w/stat 2>/dev/null; }
read _ignored
kill "$w" 2>/dev/null
i=0
while [ $i -lt 30 ] && live; do sleep 0.1; i=$((i+1)); done
kill -9 "$w" 2>/dev/null
wait "$w"
[ -n "$C" ] && rm -rf "$C"
exit 0"#;

struct Watchdog {
    sh: Child,
    stdin: Option<ChildStdin>,
    weed_pid: i32,
}

pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub s3_port: u16,
    ports: Mutex<[u16; 4]>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    remove_dir_on_exit: bool,
    log: PathBuf,
    proc: Mutex<Option<Watchdog>>,
    client: OnceLock<S3>,
}

/// The SeaweedFS shared by all tests of one test binary, started on first use.
pub fn shared_s3() -> &'static S3Server {
    static SHARED: OnceLock<S3Server> = OnceLock::new();
    SHARED.get_or_init(|| S3Server::new(true))
}

impl S3Server {
    /// A private server, owned by one test (stopped and removed on drop).
    pub fn start_private() -> S3Server {
        S3Server::new(false)
    }

    fn new(shared: bool) -> S3Server {
        // A port taken between picking and weed's bind makes weed fail: try again with fresh
        // ports (and a fresh directory: the shared server's watchdog removes its directory).
        let mut errors = Vec::new();
        for attempt in 1..=3 {
            let tmp = tempfile::Builder::new()
                .prefix("bai-s3-weed-")
                .tempdir()
                .expect("tempdir");
            let (dir, tmp) = if shared {
                (tmp.keep(), None)
            } else {
                (tmp.path().to_path_buf(), Some(tmp))
            };
            fs::create_dir_all(dir.join("data")).unwrap();
            let access_key = format!("AK{}", random_key(18));
            let secret_key = format!("SK{}", random_key(38));
            let conf = json!({"identities":[{"name":"admin",
                "credentials":[{"accessKey": access_key, "secretKey": secret_key}],
                "actions":["Admin","Read","Write","List","Tagging"]}]});
            fs::write(dir.join("s3.json"), conf.to_string()).unwrap();
            fs::set_permissions(dir.join("s3.json"), fs::Permissions::from_mode(0o600)).unwrap();
            let ports = pick_ports();
            let mut srv = S3Server {
                endpoint: format!("http://127.0.0.1:{}", ports[0]),
                access_key,
                secret_key,
                s3_port: ports[0],
                ports: Mutex::new(ports),
                log: dir.join("weed.log"),
                dir,
                _tmp: None,
                remove_dir_on_exit: shared,
                proc: Mutex::new(None),
                client: OnceLock::new(),
            };
            match srv.launch() {
                Ok(()) => {
                    srv._tmp = tmp;
                    return srv;
                }
                Err(e) => {
                    say(&format!("SeaweedFS start attempt {attempt} failed: {e}"));
                    errors.push(e);
                    srv.stop();
                }
            }
        }
        panic!(
            "SeaweedFS did not start after 3 attempts:\n{}",
            errors.join("\n")
        );
    }

    fn launch(&self) -> Result<(), String> {
        let ports = *self.ports.lock().unwrap();
        let [s3, master, volume, filer] = ports;
        remove_stale_weed_sockets(&ports);
        let pidfile = self.dir.join("weed.pid");
        let _ = fs::remove_file(&pidfile);
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(weed_bin())
            .arg(&pidfile)
            .arg(if self.remove_dir_on_exit {
                self.dir.as_os_str()
            } else {
                "".as_ref()
            })
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg("-master.telemetry=false")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg("-master.volumeSizeLimitMB=1024")
            .arg("-volume.max=100")
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            .stdin(Stdio::piped())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let mut sh = cmd.spawn().map_err(|e| format!("spawn sh for weed: {e}"))?;
        let stdin = sh.stdin.take();
        let weed_pid = poll(Duration::from_secs(10), || {
            fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        });
        let Some(weed_pid) = weed_pid else {
            let _ = sh.kill();
            let _ = sh.wait();
            return Err(format!("weed's watchdog wrote no pid\n{}", self.log_tail()));
        };
        *self.proc.lock().unwrap() = Some(Watchdog {
            sh,
            stdin,
            weed_pid,
        });

        // Ready when an S3 client can list buckets and write an object.
        let probe = S3::new(&self.endpoint, &self.access_key, &self.secret_key, true);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if !process_alive(weed_pid) {
                return Err(format!("weed exited during start-up\n{}", self.log_tail()));
            }
            let r = probe
                .list_buckets()
                .and_then(|_| probe.create_bucket_if_missing("ready-probe"))
                .and_then(|_| probe.put("ready-probe", "probe", b"ok"));
            match r {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "SeaweedFS at {} not ready after 60 s (last error: {last})\n{}",
            self.endpoint,
            self.log_tail()
        ))
    }

    /// Starts the server again on the same ports and data (after `stop`).
    pub fn start(&self) {
        assert!(
            !self.remove_dir_on_exit,
            "the shared server cannot be restarted; use a private one"
        );
        assert!(
            self.proc.lock().unwrap().is_none(),
            "server already running"
        );
        if let Err(e) = self.launch() {
            self.stop();
            panic!("SeaweedFS did not restart: {e}");
        }
    }

    /// Stops the server and waits until weed is gone.
    pub fn stop(&self) {
        let Some(mut w) = self.proc.lock().unwrap().take() else {
            return;
        };
        drop(w.stdin.take()); // end of file: the watchdog kills weed
        let exited = poll(Duration::from_secs(30), || w.sh.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = kill(Pid::from_raw(w.weed_pid), Signal::SIGKILL);
            let _ = w.sh.wait();
        }
        wait_for("weed to exit", Duration::from_secs(30), || {
            (!process_alive(w.weed_pid)).then_some(())
        });
        let ports = *self.ports.lock().unwrap();
        remove_stale_weed_sockets(&ports);
    }

    pub fn weed_pid(&self) -> Option<i32> {
        self.proc.lock().unwrap().as_ref().map(|w| w.weed_pid)
    }

    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "--- weed log ({}) ---\n{}",
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// An S3 client for this server.
    pub fn s3(&self) -> &S3 {
        self.client
            .get_or_init(|| S3::new(&self.endpoint, &self.access_key, &self.secret_key, false))
    }

    /// This server as a backend of the daemon.
    pub fn backend(&self, name: &str) -> Backend {
        Backend {
            name: name.to_string(),
            endpoint: self.endpoint.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// S3 client (aws-sdk-s3, configured by hand: no aws-config, no AWS_* from the environment)
// ---------------------------------------------------------------------------------------------

pub struct S3 {
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

fn sdk_err<E: std::error::Error>(e: E) -> String {
    format!("{}", aws_sdk_s3::error::DisplayErrorContext(e))
}

impl S3 {
    /// `probe`: one attempt with short timeouts (readiness polling).
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str, probe: bool) -> S3 {
        use aws_sdk_s3::config::{
            retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
            RequestChecksumCalculation, ResponseChecksumValidation,
        };
        let (attempts, op_timeout) = if probe { (1, 3) } else { (3, 60) };
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            // Plain HTTP to the local server; no TLS settings from the environment.
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "bai-s3-tests",
            ))
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(op_timeout))
                    .build(),
            )
            .build();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        S3 {
            client: aws_sdk_s3::Client::from_conf(conf),
            rt,
        }
    }

    pub fn list_buckets(&self) -> Result<Vec<String>, String> {
        let out = self
            .rt
            .block_on(self.client.list_buckets().send())
            .map_err(sdk_err)?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect())
    }

    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, String> {
        match self
            .rt
            .block_on(self.client.head_bucket().bucket(bucket).send())
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .map(|s| s.is_not_found())
                    .unwrap_or(false)
                    || e.raw_response()
                        .map(|r| r.status().as_u16() == 404)
                        .unwrap_or(false);
                if not_found {
                    Ok(false)
                } else {
                    Err(sdk_err(e))
                }
            }
        }
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.create_bucket().bucket(bucket).send())
            .map_err(sdk_err)?;
        Ok(())
    }

    pub fn create_bucket_if_missing(&self, bucket: &str) -> Result<(), String> {
        if self.bucket_exists(bucket)? {
            return Ok(());
        }
        self.create_bucket(bucket)
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let body = aws_sdk_s3::primitives::ByteStream::from(body.to_vec());
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .send(),
            )
            .map_err(sdk_err)?;
        Ok(())
    }

    /// PUT with user metadata (`x-amz-meta-<name>` headers), e.g. the `mode` by which s3fs
    /// makes an object a symbolic link.
    pub fn put_with_metadata(
        &self,
        bucket: &str,
        key: &str,
        body: &[u8],
        metadata: &[(&str, &str)],
    ) -> Result<(), String> {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()));
        for (k, v) in metadata {
            req = req.metadata(*k, *v);
        }
        self.rt.block_on(req.send()).map_err(sdk_err)?;
        Ok(())
    }

    /// Ok(None) when the object does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.rt.block_on(async {
            match self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => {
                    let data = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| format!("read body: {e}"))?;
                    Ok(Some(data.into_bytes().to_vec()))
                }
                Err(e) => {
                    if e.as_service_error()
                        .map(|s| s.is_no_such_key())
                        .unwrap_or(false)
                        || e.raw_response()
                            .map(|r| r.status().as_u16() == 404)
                            .unwrap_or(false)
                    {
                        Ok(None)
                    } else {
                        Err(sdk_err(e))
                    }
                }
            }
        })
    }

    /// All keys of the bucket (under `prefix` when given), sorted.
    pub fn list(&self, bucket: &str, prefix: Option<&str>) -> Result<Vec<String>, String> {
        self.rt.block_on(async {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut req = self.client.list_objects_v2().bucket(bucket);
                if let Some(p) = prefix {
                    req = req.prefix(p);
                }
                if let Some(t) = &token {
                    req = req.continuation_token(t);
                }
                let out = req.send().await.map_err(sdk_err)?;
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

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
    extra_args: Vec<String>,
    child: Option<Child>,
    tmp: Option<tempfile::TempDir>,
    /// When true (the default), Drop fails the test if s3fs processes or mounts of this daemon
    /// are still there when the test ends (every test is expected to unmount what it mounted).
    pub expect_clean_end: bool,
}

impl Daemon {
    /// A daemon whose backend "default" is `s3`.
    pub fn start(s3: &S3Server) -> Daemon {
        Daemon::start_with(&[s3.backend("default")], &[])
    }

    pub fn start_with(backends: &[Backend], extra_args: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("bai-s3-test-")
            .tempdir()
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
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--mount-root")
            .arg(&self.mount_root)
            .arg("--config")
            .arg(&self.config)
            .arg("--mount-timeout")
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
        // Settings come from the flags above only, not from the developer's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BAI_S3_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
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

    /// Live s3fs processes whose command line mentions this daemon's mount root.
    pub fn s3fs_pids(&self) -> Vec<i32> {
        s3fs_pids_mentioning(&self.mount_root)
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
    fn all_s3fs_pids(&self) -> Vec<i32> {
        s3fs_pids_mentioning(&self.dir)
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

    /// Checks now (with a short grace for s3fs to exit) that this daemon has no s3fs process and
    /// no mount left. Returns a description of what is left.
    pub fn leftovers(&self) -> Option<String> {
        let clean = poll(Duration::from_secs(10), || {
            (self.s3fs_pids().is_empty() && self.mounts().is_empty()).then_some(())
        });
        if clean.is_some() {
            return None;
        }
        Some(format!(
            "s3fs processes: {:?}; mounts: {:?}",
            self.s3fs_pids()
                .iter()
                .map(|p| format!("{p}: {}", cmdline(*p).join(" ")))
                .collect::<Vec<_>>(),
            self.mounts()
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>()
        ))
    }

    pub fn assert_clean(&self) {
        if let Some(l) = self.leftovers() {
            panic!("left behind after the test: {l}\n{}", self.logs_tail(60));
        }
    }

    /// Removes every mount in the daemon's directory (lazily, deepest first) and kills every
    /// s3fs mentioning it.
    fn force_cleanup(&self) {
        let mut mounts = self.all_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in &mounts {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        for pid in self.all_s3fs_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = poll(Duration::from_secs(10), || {
            (self.all_s3fs_pids().is_empty() && self.all_mounts().is_empty()).then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // What the test left, checked while the daemon still runs.
        let left = if self.expect_clean_end && !panicking && self.child.is_some() {
            self.leftovers()
        } else {
            None
        };
        let logs = self.logs_tail(60);
        self.stop();
        self.force_cleanup();
        let still =
            (!self.all_s3fs_pids().is_empty() || !self.all_mounts().is_empty()).then(|| {
                format!(
                    "s3fs {:?}, mounts {:?}",
                    self.all_s3fs_pids(),
                    self.all_mounts()
                        .iter()
                        .map(|m| m.mount_point.clone())
                        .collect::<Vec<_>>()
                )
            });
        if still.is_some() {
            // Never let TempDir's recursive removal walk into a live FUSE mount (it would delete
            // objects): keep the directory.
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        }
        if panicking {
            say(&format!(
                "(daemon dir kept for inspection: {})",
                self.dir.display()
            ));
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
            say(&logs);
            return;
        }
        if let Some(s) = still {
            panic!(
                "cleanup could not remove everything of {}: {s}",
                self.dir.display()
            );
        }
        if let Some(l) = left {
            panic!("the test ended with s3fs processes or mounts of its daemon still there: {l}\n{logs}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test helpers shared by daemon.rs, faults.rs and hostile.rs
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

// ---------------------------------------------------------------------------------------------
// Plugin protocol client (what dockerd sends)
// ---------------------------------------------------------------------------------------------

/// POST /<method> with `body` over the unix socket; returns HTTP status and the JSON reply
/// (a JSON string holding the raw body when it is not JSON).
pub fn plugin_call(socket: &Path, method: &str, body: &str) -> io::Result<(u16, Value)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(150)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_http_response(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{method}: {e}")))
}

pub fn parse_http_response(buf: &[u8]) -> Result<(u16, Value), String> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no end of headers in reply: {:?}",
                String::from_utf8_lossy(buf)
            )
        })?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[head_end + 4..];
    let body: Vec<u8> = if headers
        .get("transfer-encoding")
        .map(|v| v.eq_ignore_ascii_case("chunked"))
        .unwrap_or(false)
    {
        decode_chunked(rest)?
    } else if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < n {
            return Err(format!(
                "body shorter ({}) than Content-Length {n}",
                rest.len()
            ));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, v))
}

fn decode_chunked(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_s = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_s.split(';').next().unwrap().trim(), 16)
            .map_err(|e| format!("bad chunk size {size_s:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A plugin reply as Docker reads it: an error when the status is not 200 or `Err` is non-empty.
pub fn result_of(status: u16, v: &Value) -> Result<Value, String> {
    let err = v.get("Err").and_then(Value::as_str).unwrap_or("");
    if !err.is_empty() {
        return Err(err.to_string());
    }
    if status != 200 {
        return Err(format!("HTTP {status} with no Err: {v}"));
    }
    Ok(v.clone())
}

// ---------------------------------------------------------------------------------------------
// Processes and mounts
// ---------------------------------------------------------------------------------------------

pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// State letter of /proc/<pid>/stat (R, S, D, Z, ...), None when the process is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Parent pid from /proc/<pid>/stat.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_s3fs(pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "s3fs" {
        return true;
    }
    cmdline(pid)
        .first()
        .map(|a0| {
            Path::new(a0)
                .file_name()
                .map(|f| f == "s3fs")
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Live (non-zombie) s3fs processes with an argument mentioning `path`.
pub fn s3fs_pids_mentioning(path: &Path) -> Vec<i32> {
    let needle = path.to_string_lossy().into_owned();
    let mut v: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| is_s3fs(*p) && process_alive(*p))
        .filter(|p| cmdline(*p).iter().any(|a| a.contains(&needle)))
        .collect();
    v.sort();
    v
}

#[derive(Clone, Debug)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mountinfo() -> Vec<MountEntry> {
    let s = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(f.get(4)?)),
                options: f.get(5)?.to_string(),
                fs_type: f.get(sep + 1)?.to_string(),
                source: unescape_mountinfo(f.get(sep + 2)?),
            })
        })
        .collect()
}

/// Mounts at `root` or below it.
pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect()
}

pub fn is_mountpoint(path: &Path) -> bool {
    mountinfo().iter().any(|m| m.mount_point == path)
}

/// The mount entry at exactly `path` (the last one when stacked).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mountinfo().into_iter().rfind(|m| m.mount_point == path)
}

/// statvfs of the path works (a dead FUSE mount answers stat from cache but not statvfs).
pub fn statvfs_ok(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The daemon's store, read as an operator would (a connection of its own)
// ---------------------------------------------------------------------------------------------

/// The store's database in a state folder.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(bai_s3::state::DB_FILE)
}

/// Every row of the store (volume name → the record's JSON text) plus its `boot_id`, read with
/// a read-only connection of its own; None when there is no readable store.
pub fn store_rows(
    state_dir: &Path,
) -> Option<(std::collections::BTreeMap<String, String>, String)> {
    use rusqlite::{Connection, OpenFlags};
    let c = Connection::open_with_flags(store_path(state_dir), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    let mut st = c.prepare("SELECT name, record FROM volumes").ok()?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut rows: std::collections::BTreeMap<String, String> = rows;
    // Holders have a table of their own: appended to their volume's row, as JSON.
    let mut st = c
        .prepare("SELECT volume, id, count FROM holders ORDER BY volume, id")
        .ok()?;
    let holders: Vec<(String, String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let mut per: std::collections::BTreeMap<String, serde_json::Map<String, Value>> =
        Default::default();
    for (v, id, n) in holders {
        per.entry(v).or_default().insert(id, json!(n));
    }
    for (v, row) in rows.iter_mut() {
        let h = per.remove(v).unwrap_or_default();
        row.push_str(&format!("\t{}", Value::Object(h)));
    }
    let boot: String = c
        .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
            r.get(0)
        })
        .unwrap_or_default();
    Some((rows, boot))
}

/// The store's records (each row decoded), or panics.
pub fn store_records(
    state_dir: &Path,
) -> std::collections::BTreeMap<String, bai_s3::state::VolumeRecord> {
    let (rows, _) = store_rows(state_dir)
        .unwrap_or_else(|| panic!("no readable store in {}", state_dir.display()));
    rows.into_iter()
        .map(|(k, v)| {
            let (record, holders) = v.split_once('\t').expect("record and holders");
            let mut r: bai_s3::state::VolumeRecord =
                serde_json::from_str(record).unwrap_or_else(|e| panic!("row {k}: {e}: {record}"));
            r.holders = serde_json::from_str(holders).unwrap();
            (k, r)
        })
        .collect()
}

/// The state folder's store as the JSON file `volumes.json` of bai-s3 before the database, byte
/// for byte as its `Store::write` made it (`{"version":1,"boot_id":..,"volumes":{..}}`).
pub fn legacy_state_file(state_dir: &Path) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct DiskRef<'a> {
        version: u32,
        boot_id: &'a str,
        volumes: &'a std::collections::BTreeMap<String, bai_s3::state::VolumeRecord>,
    }
    let (_, boot) = store_rows(state_dir).expect("a readable store");
    let volumes = store_records(state_dir);
    serde_json::to_vec(&DiskRef {
        version: 1,
        boot_id: &boot,
        volumes: &volumes,
    })
    .unwrap()
}

/// Replace a stopped daemon's store by the `volumes.json` an earlier bai-s3 would have left in
/// the folder; returns the file's bytes.
pub fn downgrade_state_folder(state_dir: &Path) -> Vec<u8> {
    let bytes = legacy_state_file(state_dir);
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", store_path(state_dir).display()));
        let _ = fs::remove_file(f);
    }
    let path = state_dir.join("volumes.json");
    fs::write(&path, &bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    bytes
}

// ---------------------------------------------------------------------------------------------
// Shared by the fault and store tests
// ---------------------------------------------------------------------------------------------

/// Waits until nothing of the daemon is mounted and no s3fs of it runs.
pub fn wait_all_unmounted(d: &Daemon) {
    let done = poll(Duration::from_secs(20), || {
        (d.mounts().is_empty() && d.s3fs_pids().is_empty()).then_some(())
    });
    assert!(
        done.is_some(),
        "after the last Unmount: mounts {:?}, s3fs {:?}\n{}",
        d.mounts()
            .iter()
            .map(|m| m.mount_point.display().to_string())
            .collect::<Vec<_>>(),
        d.s3fs_pids(),
        d.logs_tail(60)
    );
}

/// A small xorshift generator seeded from /dev/urandom (the seed is printed, so a failing run
/// can be read back).
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = u64::from_le_bytes(random_bytes(8).try_into().unwrap()) | 1;
        say(&format!("{what}: random seed {seed:#x}"));
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
