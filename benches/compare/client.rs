//! The Docker volume plugin protocol, as dockerd speaks it: HTTP/1.1 POST over a unix socket,
//! one kept-alive connection (`Plugin`), or one connection per Mount (`mount_once`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::Res;

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

pub struct Plugin {
    pub sock: PathBuf,
    conn: Option<Conn>,
    /// How long one call may take before it counts as hung.
    timeout: Duration,
}

impl Plugin {
    pub fn new(sock: &Path) -> Plugin {
        Plugin {
            sock: sock.to_path_buf(),
            conn: None,
            timeout: Duration::from_secs(300),
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
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

    pub fn activate(&mut self) -> Res<Value> {
        self.call("Plugin.Activate", &json!({}))
    }

    pub fn create(&mut self, name: &str, opts: &[(&str, String)]) -> Res<()> {
        let o: Map<String, Value> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        self.call("VolumeDriver.Create", &json!({"Name": name, "Opts": o}))
            .map(|_| ())
    }

    pub fn mount(&mut self, name: &str, id: &str) -> Res<PathBuf> {
        let v = self.call("VolumeDriver.Mount", &json!({"Name": name, "ID": id}))?;
        Ok(PathBuf::from(v["Mountpoint"].as_str().unwrap_or("")))
    }

    pub fn unmount(&mut self, name: &str, id: &str) -> Res<()> {
        self.call("VolumeDriver.Unmount", &json!({"Name": name, "ID": id}))
            .map(|_| ())
    }

    /// One call's time until its reply's bytes are in (not parsed) and the reply's size.
    pub fn timed(&mut self, method: &str, body: &str) -> Res<(Duration, usize)> {
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

    pub fn remove(&mut self, name: &str) -> Res<()> {
        self.call("VolumeDriver.Remove", &json!({"Name": name}))
            .map(|_| ())
    }
}

/// One Mount on its own connection (as 64 containers starting at once would do).
pub fn mount_once(sock: &Path, name: &str, id: &str) -> Res<u32> {
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
