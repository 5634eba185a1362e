//! The plugin protocol client: what dockerd sends over the plugin's unix socket, and how it
//! reads the replies.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

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
/// A refusal must be one to every client: an `Err` under status 200 (which Podman, reading only
/// the status, would take for a success) panics.
pub fn result_of(status: u16, v: &Value) -> Result<Value, String> {
    let err = v.get("Err").and_then(Value::as_str).unwrap_or("");
    if !err.is_empty() {
        assert_ne!(
            status, 200,
            "a refusal answered with HTTP 200 is a success to Podman: {err}"
        );
        return Err(err.to_string());
    }
    if status != 200 {
        return Err(format!("HTTP {status} with no Err: {v}"));
    }
    Ok(v.clone())
}

/// The outcome of one protocol call, with a dead or dying daemon allowed.
#[derive(Debug)]
pub enum Answer {
    Ok,
    /// Answered with an error.
    Err(String),
    /// No answer: the connection failed or broke (the daemon was killed, or its disk went away,
    /// during the call).
    None(String),
}

/// A call to a daemon that may die while it answers.
pub fn answer(socket: &Path, method: &str, body: &Value) -> Answer {
    match plugin_call(socket, method, &body.to_string()) {
        Ok((st, v)) => match result_of(st, &v) {
            Ok(_) => Answer::Ok,
            Err(e) => Answer::Err(e),
        },
        Err(e) => Answer::None(e.to_string()),
    }
}
