//! SeaweedFS as the S3 store: one `weed server` per test binary, with a watchdog that ends it
//! when the test process ends.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// Four TCP ports for weed (s3, master, volume, filer), each with port+10000 also free (weed
/// listens there for gRPC). All of them lie below Linux's ephemeral range (32768 and up): a
/// restarted weed binds its ports again, and an outgoing connection of anything on the machine
/// may have been given a port in that range meanwhile ("bind: address already in use").
fn pick_ports() -> [u16; 4] {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < 4 {
        tries += 1;
        assert!(tries < 10_000, "could not find free ports for SeaweedFS");
        let r = u16::from_le_bytes(random_bytes(2).try_into().unwrap());
        let p = 10_000 + (r % 12_768); // 10000..22768, so p+10000 < 32768
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
            let _ = sigkill(w.weed_pid);
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

/// Polls until object `bucket`/`key` of `s3` reads `want` through S3, or panics after `within`.
pub fn s3_poll(s3: &S3Server, bucket: &str, key: &str, want: &[u8], within: Duration) {
    let mut last = Ok(None);
    let got = poll(within, || {
        last = s3.s3().get(bucket, key);
        matches!(&last, Ok(Some(b)) if b == want).then_some(())
    });
    if got.is_none() {
        panic!(
            "object {bucket}/{key} is not {:?} on {}: {last:?}",
            String::from_utf8_lossy(want),
            s3.endpoint
        );
    }
}
