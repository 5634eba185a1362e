//! A real image registry on the loopback (Debian's `docker-registry`, distribution 2.8), for
//! `docker plugin push` / `install` / `upgrade` as operators do them. dockerd talks plain HTTP
//! to a registry on 127.0.0.1 without any `insecure-registries` setting.
//!
//! Like SeaweedFS in `tests/support`, the registry runs under a small shell that stops it when
//! its stdin (a pipe held by the test process) reaches end of file, so it never outlives the
//! test process, however that ends.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::support;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

const WATCHDOG: &str = r#"R="$1"; C="$2"
"$R" serve "$C" </dev/null &
r=$!
trap '' INT TERM HUP QUIT
read _ignored
kill "$r" 2>/dev/null
wait "$r"
exit 0"#;

pub struct Registry {
    /// `127.0.0.1:PORT`, the first part of every reference pushed here.
    pub addr: String,
    dir: tempfile::TempDir,
    sh: Child,
    stdin: Option<ChildStdin>,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Status code of `HEAD path` on `addr`, or None when nothing answers. Accepts schema-2
/// manifests (without it the registry tries to convert a manifest to schema 1, and a plugin's
/// manifest cannot be).
fn http_head_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.docker.distribution.manifest.v2+json\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    /// Starts a registry with its own storage folder on a free loopback port and waits until
    /// it answers `HEAD /v2/` with 200.
    pub fn start() -> Result<Registry, String> {
        if !Path::new(REGISTRY_BIN).is_file() {
            return Err(format!(
                "{REGISTRY_BIN} is missing (scripts/deps.sh docker installs docker-registry)"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("bai-s3-registry-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let conf = dir.path().join("config.yml");
        fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
        let log = fs::File::create(dir.path().join("registry.log"))
            .map_err(|e| format!("registry log: {e}"))?;
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(REGISTRY_BIN)
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn docker-registry: {e}"))?;
        let stdin = sh.stdin.take();
        let mut reg = Registry {
            addr,
            dir,
            sh,
            stdin,
        };
        let ready = support::poll(Duration::from_secs(30), || {
            if let Ok(Some(st)) = reg.sh.try_wait() {
                return Some(Err(format!("docker-registry exited ({st})")));
            }
            (http_head_status(&reg.addr, "/v2/") == Some(200)).then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Ok(reg),
            Some(Err(e)) => Err(format!("{e}\n{}", reg.log())),
            None => Err(format!(
                "docker-registry on {} did not answer HEAD /v2/ within 30 s\n{}",
                reg.addr,
                reg.log()
            )),
        }
    }

    /// `<addr>/<name>:<tag>`.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr)
    }

    /// Whether the registry holds a manifest `name:tag` (its HTTP API): a push arrived.
    pub fn has_tag(&self, name: &str, tag: &str) -> bool {
        http_head_status(&self.addr, &format!("/v2/{name}/manifests/{tag}")) == Some(200)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        format!(
            "--- docker-registry log ---\n{}",
            fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.stdin.take()); // end of file: the watchdog stops the registry
        if support::poll(Duration::from_secs(20), || {
            self.sh.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.sh.kill();
            let _ = self.sh.wait();
        }
    }
}
