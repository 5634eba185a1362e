//! Hostile input against the real `bai-s3 serve` (its unix socket, real s3fs, real SeaweedFS):
//! malformed and oversized requests, names and options crafted to escape a path or smuggle an
//! s3fs option, slow and idle clients, a crowd of clients, an unprivileged client, a hunt for the
//! secret key after a busy trace-level session, and mount churn. Each refusal must be a clear
//! `Err`, nothing may be mounted, written or persisted, and the daemon must keep serving.
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The store's rows and boot id, as bytes (None when there is no readable store).
fn state_bytes(d: &Daemon) -> Option<Vec<u8>> {
    store_rows(&d.state_dir).map(|r| format!("{r:?}").into_bytes())
}

/// Names in the mount root (the shared `.s3fs` folder included).
fn mount_root_entries(d: &Daemon) -> BTreeSet<String> {
    fs::read_dir(&d.mount_root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `Err` of a reply, or the raw body when the reply is not a JSON object.
fn err_text(v: &Value) -> String {
    match v {
        Value::Object(_) => v
            .get("Err")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A short printable form of a possibly long or binary string, for messages.
fn shown(s: &str) -> String {
    if s.chars().count() > 40 {
        let head: String = s.chars().take(16).collect();
        format!("{head:?}...({} chars)", s.chars().count())
    } else {
        format!("{s:?}")
    }
}

/// A POST as dockerd sends it, with `Connection: close`.
fn post(method: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Sends `request` on a fresh connection (from its own thread, so that a server that answers
/// before reading everything cannot deadlock us) and reads until the server closes. Returns the
/// raw reply bytes.
fn raw_exchange(socket: &Path, request: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may refuse and close before the whole request is sent (EPIPE): fine.
        let _ = w.write_all(&request);
    });
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let _ = writer.join();
    match r {
        Ok(_) => Ok(buf),
        // A reset after a complete reply is still a reply.
        Err(e) if !buf.is_empty() => {
            say(&format!("(read ended with {e} after {} bytes)", buf.len()));
            Ok(buf)
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Checks that the daemon still answers List with exactly `names`.
fn list_still_works(d: &Daemon, names: &BTreeSet<String>, what: &str, problems: &mut Vec<String>) {
    match plugin_call(&d.socket, "VolumeDriver.List", "{}") {
        Ok((st, v)) => match result_of(st, &v) {
            Ok(v) => {
                let got: BTreeSet<String> = v
                    .get("Volumes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.get("Name").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if &got != names {
                    problems.push(format!("{what}: List changed: {got:?}, expected {names:?}"));
                }
            }
            Err(e) => problems.push(format!("{what}: the List after it failed: {e}")),
        },
        Err(e) => problems.push(format!("{what}: the List after it failed to connect: {e}")),
    }
}

/// Nothing mounted, no s3fs, state file and mount root unchanged.
fn nothing_changed(
    d: &Daemon,
    state: &Option<Vec<u8>>,
    root: &BTreeSet<String>,
    what: &str,
    problems: &mut Vec<String>,
) {
    if !d.mounts().is_empty() || !d.s3fs_pids().is_empty() {
        problems.push(format!(
            "{what}: something got mounted: mounts {:?}, s3fs {:?}",
            d.mounts()
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>(),
            d.s3fs_pids()
        ));
    }
    if &state_bytes(d) != state {
        problems.push(format!(
            "{what}: the state file changed:\nbefore: {}\nafter:  {}",
            String::from_utf8_lossy(state.as_deref().unwrap_or(b"(none)")),
            String::from_utf8_lossy(state_bytes(d).as_deref().unwrap_or(b"(none)"))
        ));
    }
    let now = mount_root_entries(d);
    if &now != root {
        problems.push(format!(
            "{what}: the mount root changed: {now:?}, was {root:?}"
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed requests
// ---------------------------------------------------------------------------------------------

/// One hostile request: what is sent, and what the refusal must look like.
struct Case {
    what: &'static str,
    request: Vec<u8>,
    /// Acceptable HTTP statuses of the reply.
    statuses: &'static [u16],
    /// The `Err` must contain one of these (case-insensitive); empty: the reply may have no body
    /// (malformed HTTP, refused by the HTTP layer before any handler).
    words: &'static [&'static str],
}

/// Podman's plugin client reads only the HTTP status: a refusal answered with 200 and an `Err`
/// is a success to it (a refused Create leaves a volume, a refused Mount an empty Mountpoint that
/// it binds). Every endpoint's refusal must be an error status with the `Err` dockerd shows.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn every_refusal_is_an_http_error_with_its_err() {
    let Some((s3, d)) = setup("every_refusal_is_an_http_error_with_its_err") else {
        return;
    };
    let b = new_bucket(s3, "refusal");
    let vol = unique_name("refusal-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    mount_ok(&d, &vol, &id);
    let unknown = unique_name("refusal-unknown");
    let missing_bucket = unique_name("refusal-missing");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "VolumeDriver.Create",
            json!({"Name": unique_name("refusal-bad"), "Opts": {"bucket": b, "ro": "maybe"}}),
            "ro",
        ),
        (
            "VolumeDriver.Create",
            json!({"Name": vol, "Opts": {"bucket": b, "ro": "true"}}),
            "ro",
        ),
        (
            "VolumeDriver.Create",
            json!({"Name": missing_bucket, "Opts": {}}),
            &missing_bucket,
        ),
        ("VolumeDriver.Remove", json!({"Name": vol}), &vol),
        ("VolumeDriver.Remove", json!({"Name": unknown}), &unknown),
        (
            "VolumeDriver.Mount",
            json!({"Name": unknown, "ID": new_id()}),
            &unknown,
        ),
        ("VolumeDriver.Path", json!({"Name": unknown}), &unknown),
        ("VolumeDriver.Get", json!({"Name": unknown}), &unknown),
    ];
    for (method, body, word) in &cases {
        let (st, v) = d.call(method, body);
        let err = err_text(&v);
        assert!(
            st == 500 && err.contains(word),
            "{method} {body}: HTTP {st}, Err {err:?} (a refusal must be HTTP 500 with an Err naming {word:?})"
        );
    }
    // A Mount that fails in s3fs (its bucket deleted behind the volume's back) is refused alike.
    let gone = new_bucket(s3, "refusal-gone");
    let v2 = unique_name("refusal-gone");
    create_ok(&d, &v2, &[("bucket", &gone)]);
    delete_bucket(s3, &gone);
    let (st, v) = d.call("VolumeDriver.Mount", &json!({"Name": v2, "ID": new_id()}));
    assert!(
        st == 500
            && !err_text(&v).is_empty()
            && v.get("Mountpoint")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty(),
        "a failed Mount: HTTP {st} {v}"
    );
    // Successes stay 200 with an empty Err.
    let (st, v) = d.call("VolumeDriver.Unmount", &json!({"Name": vol, "ID": id}));
    assert!(
        st == 200 && err_text(&v).is_empty(),
        "Unmount: HTTP {st} {v}"
    );
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn malformed_requests_get_a_clear_err_and_change_nothing() {
    let Some((s3, d)) = setup("malformed_requests_get_a_clear_err_and_change_nothing") else {
        return;
    };
    // One real volume, so that a request misread as valid would have something to mount, and
    // the state file has content to compare.
    let b = new_bucket(s3, "malformed");
    let vol = unique_name("malformed-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let names: BTreeSet<String> = [vol.clone()].into();

    let nested = "[".repeat(100_000);
    let nested_obj = format!("{}{}", "{\"Name\":".repeat(50_000), "\"x\"");
    let huge = format!(
        "{{\"Name\":\"{vol}\",\"ID\":\"x\",\"Pad\":\"{}\"}}",
        "a".repeat(2 << 20)
    );
    let mut chunked = b"POST /VolumeDriver.Mount HTTP/1.1\r\nHost: plugin\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for _ in 0..40 {
        let chunk = vec![b' '; 64 << 10];
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let mount_no_id = json!({ "Name": vol }).to_string();
    let cases: Vec<Case> = vec![
        Case {
            what: "malformed JSON",
            request: post("VolumeDriver.Create", br#"{"Name": "x", "Opts": {"#),
            statuses: &[400],
            words: &["malformed", "json", "eof"],
        },
        Case {
            what: "not JSON at all",
            request: post("VolumeDriver.Mount", b"Name=x&ID=y"),
            statuses: &[400],
            words: &["malformed", "expected"],
        },
        Case {
            what: "invalid UTF-8 in a string",
            request: post("VolumeDriver.Create", b"{\"Name\":\"a\xff\xfeb\"}"),
            statuses: &[400],
            words: &["malformed", "utf-8", "unicode"],
        },
        Case {
            what: "100k nested arrays",
            request: post("VolumeDriver.Create", nested.as_bytes()),
            statuses: &[400],
            words: &["recursion", "malformed"],
        },
        Case {
            what: "50k nested objects",
            request: post("VolumeDriver.Mount", nested_obj.as_bytes()),
            statuses: &[400],
            words: &["recursion", "malformed"],
        },
        Case {
            what: "wrong type: Name is a number",
            request: post("VolumeDriver.Create", br#"{"Name":1}"#),
            statuses: &[400],
            words: &["invalid type"],
        },
        Case {
            what: "wrong type: Opts is a list",
            request: post(
                "VolumeDriver.Create",
                format!(r#"{{"Name":"{vol}-2","Opts":["bucket","{b}"]}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["invalid type"],
        },
        Case {
            what: "wrong type: an option value is a number",
            request: post(
                "VolumeDriver.Create",
                format!(r#"{{"Name":"{vol}-3","Opts":{{"bucket":"{b}","uid":0}}}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["invalid type"],
        },
        Case {
            what: "wrong type: ID is an object",
            request: post(
                "VolumeDriver.Mount",
                format!(r#"{{"Name":"{vol}","ID":{{"x":1}}}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["invalid type"],
        },
        Case {
            what: "the body is null",
            request: post("VolumeDriver.Mount", b"null"),
            statuses: &[400],
            words: &["invalid type", "malformed"],
        },
        Case {
            what: "missing field: Mount without ID",
            request: post("VolumeDriver.Mount", mount_no_id.as_bytes()),
            statuses: &[400],
            words: &["missing field `ID`"],
        },
        Case {
            what: "missing field: Create without Name",
            request: post(
                "VolumeDriver.Create",
                format!(r#"{{"Opts":{{"bucket":"{b}"}}}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["missing field `Name`"],
        },
        Case {
            what: "missing field: Remove with {}",
            request: post("VolumeDriver.Remove", b"{}"),
            statuses: &[400],
            words: &["missing field `Name`"],
        },
        Case {
            what: "duplicate field",
            request: post(
                "VolumeDriver.Mount",
                format!(r#"{{"Name":"{vol}","ID":"a","ID":"b"}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["duplicate field"],
        },
        Case {
            what: "trailing garbage after the JSON",
            request: post(
                "VolumeDriver.Mount",
                format!(r#"{{"Name":"{vol}","ID":"a"}} {{"Name":"x"}}"#).as_bytes(),
            ),
            statuses: &[400],
            words: &["trailing"],
        },
        Case {
            what: "empty body for Create",
            request: post("VolumeDriver.Create", b""),
            statuses: &[400],
            words: &["eof", "malformed"],
        },
        Case {
            what: "empty body for Mount",
            request: post("VolumeDriver.Mount", b""),
            statuses: &[400],
            words: &["eof", "malformed"],
        },
        Case {
            what: "huge body (2 MiB, Content-Length)",
            request: post("VolumeDriver.Mount", huge.as_bytes()),
            statuses: &[413],
            words: &["larger than"],
        },
        Case {
            what: "huge body (2.5 MiB, chunked)",
            request: chunked,
            statuses: &[413],
            words: &["larger than"],
        },
        Case {
            what: "unknown endpoint",
            request: post("VolumeDriver.Explode", b"{}"),
            statuses: &[404],
            words: &["unknown endpoint"],
        },
        Case {
            what: "path traversal in the endpoint",
            request: post("../../VolumeDriver.List", b"{}"),
            statuses: &[400, 404],
            words: &["unknown endpoint"],
        },
        Case {
            what: "GET instead of POST",
            request:
                b"GET /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            statuses: &[405],
            words: &["POST"],
        },
        Case {
            what: "DELETE with a body",
            request: format!(
                "DELETE /VolumeDriver.Remove HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{{\"Name\":\"{vol}\"}}",
                vol.len() + 11
            )
            .into_bytes(),
            statuses: &[405],
            words: &["POST"],
        },
        // Malformed HTTP: refused by the HTTP layer before any handler runs, so the reply may
        // be a bare 400 without a body; what matters is the refusal and the next call.
        Case {
            what: "garbage instead of HTTP",
            request: b"\x00\x01\x02hello there\r\n\r\n".to_vec(),
            statuses: &[400],
            words: &[],
        },
        Case {
            what: "non-numeric Content-Length",
            request:
                b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\nContent-Length: abc\r\n\r\n{}"
                    .to_vec(),
            statuses: &[400],
            words: &[],
        },
        Case {
            what: "two different Content-Lengths",
            request: b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\
                Content-Length: 3\r\n\r\n{}"
                .to_vec(),
            statuses: &[400],
            words: &[],
        },
        Case {
            what: "a header line without a colon",
            request:
                b"POST /VolumeDriver.List HTTP/1.1\r\nHost plugin\r\nContent-Length: 2\r\n\r\n{}"
                    .to_vec(),
            statuses: &[400],
            words: &[],
        },
    ];

    let state = state_bytes(&d);
    assert!(state.is_some(), "no state file after a Create");
    let root = mount_root_entries(&d);
    let mut problems = Vec::new();
    for c in &cases {
        let started = Instant::now();
        match raw_exchange(&d.socket, c.request.clone()) {
            Err(e) => problems.push(format!("{}: no reply: {e}", c.what)),
            Ok(raw) if raw.is_empty() && c.words.is_empty() => {
                // A connection closed without a word is a refusal too, for malformed HTTP.
            }
            Ok(raw) => match parse_http_response(&raw) {
                Err(e) => problems.push(format!("{}: unreadable reply: {e}", c.what)),
                Ok((st, v)) => {
                    let err = err_text(&v);
                    if !c.statuses.contains(&st) {
                        problems.push(format!(
                            "{}: HTTP {st} (expected one of {:?}): {v}",
                            c.what, c.statuses
                        ));
                    }
                    if !c.words.is_empty() {
                        let lower = err.to_lowercase();
                        if err.trim().is_empty() {
                            problems.push(format!("{}: the reply has no Err: {v}", c.what));
                        } else if !c.words.iter().any(|w| lower.contains(&w.to_lowercase())) {
                            problems.push(format!(
                                "{}: Err does not name the problem (one of {:?}): {}",
                                c.what,
                                c.words,
                                shown(&err)
                            ));
                        }
                        if err.len() > 2000 {
                            problems.push(format!(
                                "{}: Err is {} bytes long (echoes the input?)",
                                c.what,
                                err.len()
                            ));
                        }
                    }
                }
            },
        }
        if started.elapsed() > Duration::from_secs(5) {
            problems.push(format!(
                "{}: the refusal took {:?}",
                c.what,
                started.elapsed()
            ));
        }
        nothing_changed(&d, &state, &root, c.what, &mut problems);
        list_still_works(&d, &names, c.what, &mut problems);
    }
    // Still serving real work after all that.
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("after"), b"ok").unwrap();
    unmount_ok(&d, &vol, &id);
    wait_nothing_mounted(&d, "after the final Unmount", Duration::from_secs(15));
    assert!(
        problems.is_empty(),
        "hostile requests:\n{}\n{}",
        problems.join("\n"),
        d.logs_tail(30)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Hostile names and option values
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn hostile_names_and_options_are_refused_naming_them() {
    let Some((s3, d)) = setup("hostile_names_and_options_are_refused_naming_them") else {
        return;
    };
    let b = new_bucket(s3, "hostile-opts");
    let existing = unique_name("hostile-existing");
    create_ok(&d, &existing, &[("bucket", &b)]);
    let names: BTreeSet<String> = [existing.clone()].into();
    let state = state_bytes(&d);
    let root = mount_root_entries(&d);
    let mut problems = Vec::new();

    // Volume names: (name, a word the Err must contain besides "name").
    let long = "a".repeat(300);
    let long_ok_chars = format!("v{}", "-".repeat(200));
    let name_cases: Vec<(String, &str)> = vec![
        ("a/b".into(), "a/b"),
        ("../../etc".into(), "../../etc"),
        ("..".into(), ".."),
        (".".into(), "name"),
        ("a\0b".into(), "name"),
        ("\0".into(), "name"),
        ("тест".into(), "тест"),
        ("vol-é".into(), "vol-é"),
        ("😀".into(), "😀"),
        ("v\u{202e}gpj".into(), "name"),
        (long, "long"),
        (long_ok_chars, "long"),
        (".hidden".into(), ".hidden"),
        (".s3fs".into(), ".s3fs"),
        ("-dash".into(), "-dash"),
        ("has space".into(), "has space"),
        (" lead".into(), "name"),
        ("trail ".into(), "name"),
        ("tab\there".into(), "name"),
        ("new\nline".into(), "name"),
        ("vf:ro".into(), "vf:ro"),
        ("a,b".into(), "a,b"),
        ("a=b".into(), "a=b"),
        ("".into(), "empty"),
    ];
    for (name, word) in &name_cases {
        let what = format!("volume name {}", shown(name));
        let (st, v) = d.call(
            "VolumeDriver.Create",
            &json!({"Name": name, "Opts": {"bucket": b}}),
        );
        match result_of(st, &v) {
            Ok(_) => problems.push(format!("{what}: Create succeeded")),
            Err(e) => {
                if !e.to_lowercase().contains("name") || !e.contains(word) {
                    problems.push(format!(
                        "{what}: Err does not say the name is wrong ({word:?}): {}",
                        shown(&e)
                    ));
                }
            }
        }
        // A name that never became a volume is unknown to every other call too.
        let (st, v) = d.call("VolumeDriver.Mount", &json!({"Name": name, "ID": new_id()}));
        if result_of(st, &v).is_ok() {
            problems.push(format!("{what}: Mount succeeded: {v}"));
        }
        nothing_changed(&d, &state, &root, &what, &mut problems);
        list_still_works(&d, &names, &what, &mut problems);
    }

    // Options: (options, words the Err must all contain).
    type OptCase<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let opt_cases: Vec<OptCase> = vec![
        (
            vec![("prefix", "a,allow_root")],
            vec!["prefix", "a,allow_root"],
        ),
        (vec![("prefix", "a,allow_other,umask=000")], vec!["prefix"]),
        (vec![("uid", "0,umask=000")], vec!["uid", "0,umask=000"]),
        (vec![("gid", "0 ")], vec!["gid"]),
        (vec![("umask", "000\n")], vec!["umask"]),
        (vec![("umask", "0777,allow_other")], vec!["umask"]),
        (vec![("prefix", "a b")], vec!["prefix", "a b"]),
        (vec![("prefix", "a\nb")], vec!["prefix"]),
        (vec![("prefix", "a=b")], vec!["prefix", "a=b"]),
        (vec![("prefix", "a//b")], vec!["prefix"]),
        (vec![("prefix", "a/../../b")], vec!["prefix"]),
        (vec![("prefix", "a\0b")], vec!["prefix"]),
        (vec![("prefix", "/")], vec!["prefix", "whole bucket"]),
        (vec![("prefix", "//")], vec!["prefix", "whole bucket"]),
        (vec![("prefix", "")], vec!["prefix", "whole bucket"]),
        (
            vec![("bucket", "x,allow_other")],
            vec!["bucket", "x,allow_other"],
        ),
        (vec![("bucket", "b=c")], vec!["bucket"]),
        (vec![("bucket", "../b")], vec!["bucket"]),
        (vec![("backend", "default,allow_other")], vec!["backend"]),
        (vec![("backend", "../default")], vec!["backend"]),
        (vec![("ro", "true,allow_other")], vec!["ro"]),
        (vec![("cache", "true\n")], vec!["cache"]),
        (
            vec![("parallel-count", "8,nonempty")],
            vec!["parallel-count"],
        ),
        (
            vec![("multipart-size", "16 -o allow_other")],
            vec!["multipart-size"],
        ),
        (
            vec![("stat-cache-expire", "-1")],
            vec!["stat-cache-expire", "-1"],
        ),
        (vec![("allow_other", "")], vec!["allow_other"]),
        (vec![("allow_root", "true")], vec!["allow_root"]),
        (vec![("o", "allow_other")], vec!["\"o\""]),
        (vec![("nonempty", "1")], vec!["nonempty"]),
        (vec![("", "x")], vec!["\"\""]),
        (
            vec![("secret-key", "wJalrXUtnFEMIK7MDENGbPxRfiCY")],
            vec!["secret-key"],
        ),
        (
            vec![("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENG")],
            vec!["AWS_SECRET_ACCESS_KEY"],
        ),
        (
            vec![("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE")],
            vec!["aws_access_key_id"],
        ),
        (
            vec![("access-key", "AKIAIOSFODNN7EXAMPLE")],
            vec!["access-key"],
        ),
        (
            vec![("passwd_file", "/etc/passwd-s3fs")],
            vec!["passwd_file"],
        ),
        (vec![("SessionToken", "abc")], vec!["SessionToken"]),
        (vec![("backend", "nosuchbackend")], vec!["nosuchbackend"]),
        (vec![("backend", "Default")], vec!["Default"]),
    ];
    for (i, (opts, words)) in opt_cases.iter().enumerate() {
        let name = format!("{}-{i}", unique_name("hostile-opt"));
        let what = format!("options {opts:?}");
        let mut all: Vec<(&str, &str)> = vec![("bucket", b.as_str())];
        all.retain(|(k, _)| !opts.iter().any(|(k2, _)| k2 == k));
        all.extend(opts.iter().cloned());
        match d.create(&name, &all) {
            Ok(()) => problems.push(format!("{what}: Create succeeded")),
            Err(e) => {
                for w in words {
                    if !e.contains(w) {
                        problems.push(format!("{what}: Err does not name {w:?}: {e}"));
                    }
                }
                // A credential-looking value must not be echoed back (Docker shows the Err).
                for (k, v) in opts {
                    let lk = k.to_lowercase();
                    if (lk.contains("key") || lk.contains("secret")) && v.len() > 8 && e.contains(v)
                    {
                        problems.push(format!("{what}: Err echoes the credential value: {e}"));
                    }
                }
            }
        }
        nothing_changed(&d, &state, &root, &what, &mut problems);
        list_still_works(&d, &names, &what, &mut problems);
        if d.get(&name).is_ok() {
            problems.push(format!(
                "{what}: Get {name} succeeded after a refused Create"
            ));
        }
    }
    // A huge refused value is quoted cut short, in the Err and in the log line alike.
    let huge = "9".repeat(900 * 1024);
    let name = unique_name("hostile-huge");
    match d.create(&name, &[("bucket", b.as_str()), ("uid", huge.as_str())]) {
        Ok(()) => problems.push("a 900 KiB uid: Create succeeded".into()),
        Err(e) if e.len() > 1024 || !e.contains("uid") => problems.push(format!(
            "a 900 KiB uid: Err of {} bytes: {}",
            e.len(),
            shown(&e)
        )),
        Err(_) => {}
    }
    // (The daemon runs at trace level here, where the S3 SDK's own lines are long: look for the
    // value, not for long lines.)
    if let Some(line) = d.logs().lines().find(|l| l.contains(&huge[..1024])) {
        problems.push(format!(
            "a log line of {} bytes echoes the refused value: {}",
            line.len(),
            line.chars().take(300).collect::<String>()
        ));
    }
    assert!(
        problems.is_empty(),
        "hostile names and options:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Slow and idle clients
// ---------------------------------------------------------------------------------------------

/// Opens a connection that writes `request` one byte per second from its own thread and waits
/// for the server to end it. Returns the connection's thread, which yields how long after
/// connecting the server closed it and what it sent (None: still open after `give_up`).
fn slow_client(
    socket: &Path,
    request: &'static [u8],
    give_up: Duration,
) -> std::thread::JoinHandle<(Option<Duration>, Vec<u8>)> {
    let s = UnixStream::connect(socket).expect("slow client connects");
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut reader = s.try_clone().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut writer = s;
        writer
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut sent = 0;
        let mut next_byte = started;
        let mut got = Vec::new();
        while started.elapsed() < give_up {
            if sent < request.len() && Instant::now() >= next_byte {
                if writer.write_all(&request[sent..sent + 1]).is_err() {
                    return (Some(started.elapsed()), got);
                }
                sent += 1;
                next_byte += Duration::from_secs(1);
            }
            let mut buf = [0u8; 512];
            match reader.read(&mut buf) {
                Ok(0) => return (Some(started.elapsed()), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return (Some(started.elapsed()), got),
            }
        }
        (None, got)
    })
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn slow_and_idle_clients_do_not_block_others_and_are_cut() {
    let Some((s3, d)) = setup("slow_and_idle_clients_do_not_block_others_and_are_cut") else {
        return;
    };
    let b = new_bucket(s3, "slowloris");
    const SLOW: &[u8] = b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\n\
        Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: 2\r\n\r\n{}";
    let give_up = Duration::from_secs(25);
    let slow = slow_client(&d.socket, SLOW, give_up);
    // A client that connects and never sends a byte.
    let idle = slow_client(&d.socket, b"", give_up);
    // A client whose headers are complete but whose body never comes.
    let mut stuck_body = UnixStream::connect(&d.socket).unwrap();
    stuck_body
        .write_all(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100\r\n\r\n{\"Na")
        .unwrap();
    let stuck_started = Instant::now();
    let stuck = std::thread::spawn(move || {
        stuck_body
            .set_read_timeout(Some(Duration::from_secs(25)))
            .unwrap();
        let mut buf = Vec::new();
        let _ = stuck_body.read_to_end(&mut buf);
        (stuck_started.elapsed(), buf)
    });

    // Meanwhile, other clients are served at once.
    let mut problems = Vec::new();
    let timed =
        |what: &str, problems: &mut Vec<String>, f: &mut dyn FnMut() -> Result<(), String>| {
            let t = Instant::now();
            if let Err(e) = f() {
                problems.push(format!(
                    "{what} failed while a slow client is connected: {e}"
                ));
            }
            let took = t.elapsed();
            if took >= Duration::from_secs(1) {
                problems.push(format!(
                    "{what} took {took:?} while a slow client is connected"
                ));
            }
        };
    let vol = unique_name("slowloris-vol");
    let id = new_id();
    for round in 0..3 {
        timed(&format!("List (round {round})"), &mut problems, &mut || {
            d.list().map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(1500)); // let the slow client send more bytes
    }
    timed("Create", &mut problems, &mut || {
        d.create(&vol, &[("bucket", &b)])
    });
    timed("Mount", &mut problems, &mut || {
        d.mount(&vol, &id).map(|_| ())
    });
    timed("Get", &mut problems, &mut || d.get(&vol).map(|_| ()));
    timed("Unmount", &mut problems, &mut || d.unmount(&vol, &id));
    timed("List (last)", &mut problems, &mut || d.list().map(|_| ()));

    let (slow_closed, slow_got) = slow.join().unwrap();
    let (idle_closed, idle_got) = idle.join().unwrap();
    let (stuck_closed, stuck_got) = stuck.join().unwrap();
    match slow_closed {
        None => problems.push(format!(
            "the slow client (1 byte/s) was still connected after {give_up:?}"
        )),
        Some(t) if t > Duration::from_secs(15) => {
            problems.push(format!("the slow client was cut only after {t:?}"))
        }
        Some(t) => say(&format!("slow client cut after {t:?}")),
    }
    if slow_got.windows(7).any(|w| w == b"Volumes") {
        problems.push("the slow client's request was served".into());
    }
    match idle_closed {
        None => problems.push(format!(
            "the idle client (no byte sent) was still connected after {give_up:?}"
        )),
        Some(t) if t > Duration::from_secs(15) => {
            problems.push(format!("the idle client was cut only after {t:?}"))
        }
        Some(t) => say(&format!(
            "idle client cut after {t:?} ({} bytes)",
            idle_got.len()
        )),
    }
    if stuck_closed > Duration::from_secs(15) {
        problems.push(format!(
            "the client that never sent its body was cut only after {stuck_closed:?}"
        ));
    } else {
        say(&format!(
            "stuck-body client cut after {stuck_closed:?}: {:?}",
            String::from_utf8_lossy(&stuck_got)
        ));
    }
    if !d.list_names().contains(&vol) || d.list_names().len() != 1 {
        problems.push(format!("List after the slow clients: {:?}", d.list_names()));
    }
    wait_nothing_mounted(&d, "after the Unmount", Duration::from_secs(15));
    assert!(
        problems.is_empty(),
        "slow clients:\n{}\n{}",
        problems.join("\n"),
        d.logs_tail(30)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Many clients at once
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn three_hundred_simultaneous_clients_are_all_answered() {
    let Some((s3, d)) = setup("three_hundred_simultaneous_clients_are_all_answered") else {
        return;
    };
    let b = new_bucket(s3, "crowd");
    let vol = unique_name("crowd-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    const LISTERS: usize = 300;
    const MOUNTERS: usize = 6;
    let barrier = Arc::new(Barrier::new(LISTERS + MOUNTERS));
    let socket = Arc::new(d.socket.clone());
    let mut threads = Vec::new();
    // No retry on connect: the daemon listens with the kernel's full backlog (somaxconn) and
    // serves 512 connections at once, so 306 simultaneous connects must all succeed.
    for i in 0..LISTERS {
        let (barrier, socket, vol) = (barrier.clone(), socket.clone(), vol.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            barrier.wait();
            let (st, v) = plugin_call(&socket, "VolumeDriver.List", "{}")
                .map_err(|e| format!("List #{i}: {e}"))?;
            let v = result_of(st, &v).map_err(|e| format!("List #{i}: {e}"))?;
            let listed = v
                .get("Volumes")
                .and_then(Value::as_array)
                .map(|a| a.iter().any(|x| x.get("Name") == Some(&json!(vol))))
                .unwrap_or(false);
            if listed {
                Ok(())
            } else {
                Err(format!("List #{i} does not list {vol}: {v}"))
            }
        }));
    }
    for i in 0..MOUNTERS {
        let (barrier, socket, vol) = (barrier.clone(), socket.clone(), vol.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let id = random_hex(32);
            barrier.wait();
            let body = json!({"Name": vol, "ID": id}).to_string();
            let (st, v) = plugin_call(&socket, "VolumeDriver.Mount", &body)
                .map_err(|e| format!("Mount #{i}: {e}"))?;
            let v = result_of(st, &v).map_err(|e| format!("Mount #{i}: {e}"))?;
            let mp = v.get("Mountpoint").and_then(Value::as_str).unwrap_or("");
            if !is_mountpoint(Path::new(mp)) {
                return Err(format!("Mount #{i} answered {v} but nothing is mounted"));
            }
            let f = Path::new(mp).join(format!("crowd-{i}"));
            fs::write(&f, b"x").map_err(|e| format!("write {}: {e}", f.display()))?;
            let (st, v) = plugin_call(&socket, "VolumeDriver.Unmount", &body)
                .map_err(|e| format!("Unmount #{i}: {e}"))?;
            result_of(st, &v).map_err(|e| format!("Unmount #{i}: {e}"))?;
            Ok(())
        }));
    }
    let started = Instant::now();
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    say(&format!(
        "{} simultaneous clients answered in {:?}",
        LISTERS + MOUNTERS,
        started.elapsed()
    ));
    assert!(
        errors.is_empty(),
        "{} of {} clients failed:\n{}\n{}",
        errors.len(),
        LISTERS + MOUNTERS,
        errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        d.logs_tail(30)
    );
    let st = d.status(&vol).unwrap();
    assert_eq!(
        st.get("holders"),
        Some(&json!(0)),
        "after all Unmounts: {st}"
    );
    wait_nothing_mounted(
        &d,
        "after every Mount was unmounted",
        Duration::from_secs(15),
    );
    let keys = s3.s3().list(&b, Some("crowd-")).unwrap();
    assert_eq!(
        keys.len(),
        MOUNTERS,
        "objects written by the mounters: {keys:?}"
    );
    // And the daemon keeps serving.
    assert_eq!(d.list_names(), vec![vol.clone()]);
}

// ---------------------------------------------------------------------------------------------
// 5. An unprivileged client
// ---------------------------------------------------------------------------------------------

/// Runs as nobody: connect to the socket, read the state and backends files, list the state
/// folder; prints {"what": "ok" | errno name}.
const PROBE: &str = r#"
import errno, json, os, socket, sys
sock, state, backends, statedir = sys.argv[1:5]
r = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
def attempt(name, f):
    try:
        f()
        r[name] = "ok"
    except OSError as e:
        r[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt("stat-socket", lambda: os.stat(sock))
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    r["reply"] = s.recv(4096).decode("latin-1")
attempt("connect", connect)
attempt("read-state", lambda: open(state, "rb").read())
attempt("read-backends", lambda: open(backends, "rb").read())
attempt("list-state-dir", lambda: os.listdir(statedir))
print(json.dumps(r))
"#;

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn an_unprivileged_client_is_refused() {
    let Some((s3, mut d)) = setup("an_unprivileged_client_is_refused") else {
        return;
    };
    let python = Path::new("/usr/bin/python3");
    if !python.is_file() {
        if in_ci() {
            panic!("an_unprivileged_client_is_refused: /usr/bin/python3 is missing under CI=true");
        }
        say("SKIP an_unprivileged_client_is_refused: /usr/bin/python3 is missing");
        return;
    }
    // Let the daemon create its state folder itself (the harness made one in advance), and
    // open the test's folder to everyone, so that only the daemon's own modes protect its files.
    d.stop();
    fs::remove_dir_all(&d.state_dir).unwrap();
    fs::set_permissions(&d.dir, fs::Permissions::from_mode(0o755)).unwrap();
    d.restart();
    let b = new_bucket(s3, "nobody");
    let vol = unique_name("nobody-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let state_file = store_path(&d.state_dir);

    let sock_meta = fs::symlink_metadata(&d.socket).unwrap();
    let mut problems = Vec::new();
    if mode(&d.socket) != 0o600 || sock_meta.uid() != 0 {
        problems.push(format!(
            "socket mode {:o} owner {} (expected 600, root)",
            mode(&d.socket),
            sock_meta.uid()
        ));
    }
    if mode(&d.state_dir) != 0o700 {
        problems.push(format!(
            "state folder {} has mode {:o} (expected 700)",
            d.state_dir.display(),
            mode(&d.state_dir)
        ));
    }
    if mode(&state_file) & 0o077 != 0 {
        problems.push(format!("state file has mode {:o}", mode(&state_file)));
    }

    let out = Command::new(python)
        .arg("-c")
        .arg(PROBE)
        .arg(&d.socket)
        .arg(&state_file)
        .arg(&d.config)
        .arg(&d.state_dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .output()
        .expect("run python3 as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the probe as nobody failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("probe output {stdout:?}: {e}"));
    say(&format!("as nobody: {r}"));
    assert_eq!(
        r["uid"],
        json!(NOBODY),
        "the probe did not run as nobody: {r}"
    );
    assert!(
        r["groups"]
            .as_array()
            .map(|g| !g.contains(&json!(0)))
            .unwrap_or(false),
        "the probe kept root's group: {r}"
    );
    // The path is reachable: the refusal below is the socket's own mode.
    if r["stat-socket"] != json!("ok") {
        problems.push(format!(
            "nobody cannot even stat the socket (test setup?): {r}"
        ));
    }
    for (what, want) in [
        ("connect", "EACCES"),
        ("read-state", "EACCES"),
        ("read-backends", "EACCES"),
        ("list-state-dir", "EACCES"),
    ] {
        if r[what] != json!(want) {
            problems.push(format!("as nobody, {what}: {} (expected {want})", r[what]));
        }
    }
    // The daemon saw nothing and keeps serving root.
    assert_eq!(d.list_names(), vec![vol.clone()]);
    assert!(
        problems.is_empty(),
        "unprivileged access:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 6. The secret key, after a busy trace-level session
// ---------------------------------------------------------------------------------------------

/// Deletes an (empty) bucket through S3, with the SDK (no secret on any command line).
fn delete_bucket(s3: &S3Server, bucket: &str) {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .credentials_provider(Credentials::new(
            &s3.access_key,
            &s3.secret_key,
            None,
            None,
            "hostile-tests",
        ))
        .region(Region::new("us-east-1"))
        .endpoint_url(&s3.endpoint)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(client.delete_bucket().bucket(bucket).send())
        .unwrap_or_else(|e| {
            panic!(
                "delete bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
}

/// Every regular file under `dir` (not entering mounts), with its mode.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if !is_mountpoint(&p) {
                files_under(&p, out);
            }
        } else if m.is_file() {
            out.push((p, m.permissions().mode() & 0o777));
        }
    }
}

/// Processes whose command line contains any of `needles`.
fn argv_containing(needles: &[&str]) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let argv = cmdline(pid).join(" ");
            needles
                .iter()
                .any(|n| argv.contains(n))
                .then(|| format!("{pid}: {argv}"))
        })
        .collect()
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn the_secret_key_appears_nowhere() {
    let Some((s3, d)) = setup("the_secret_key_appears_nowhere") else {
        return;
    };
    let secret = s3.secret_key.clone();
    // A second backend's key, added by a change of the backends file while running.
    let other_secret = format!("SK{}", random_hex(20));
    let secrets = [secret.as_str(), other_secret.as_str()];
    let mut replies: Vec<String> = Vec::new();
    let mut argv_hits: Vec<String> = Vec::new();
    let mut call = |method: &str, body: Value| -> Value {
        let (st, v) = d.call(method, &body);
        // The reply only: some requests carry the secret on purpose.
        replies.push(format!("{method} -> {st} {v}"));
        v
    };

    let b = unique_name("secret-hunt");
    let vol = unique_name("secret-vol");
    let v = call(
        "VolumeDriver.Create",
        json!({"Name": vol, "Opts": {"bucket": b, "create-bucket": "true"}}),
    );
    assert_eq!(err_text(&v), "", "Create {vol}: {v}");
    // Refused Creates that carry the real secret as a value.
    for key in [
        "secret-key",
        "AWS_SECRET_ACCESS_KEY",
        "password",
        "sse-c-key",
        "token",
    ] {
        let v = call(
            "VolumeDriver.Create",
            json!({"Name": unique_name("secret-refused"), "Opts": {"bucket": b, key: secret}}),
        );
        assert!(
            !err_text(&v).is_empty(),
            "Create with {key}=<secret> succeeded: {v}"
        );
    }
    let id = new_id();
    let v = call("VolumeDriver.Mount", json!({"Name": vol, "ID": id}));
    assert_eq!(err_text(&v), "", "Mount {vol}: {v}\n{}", d.logs_tail(40));
    let mp = d.mountpoint_of(&vol);
    fs::write(mp.join("f.txt"), b"data").unwrap();
    assert_eq!(fs::read(mp.join("f.txt")).unwrap(), b"data");
    argv_hits.extend(argv_containing(&secrets));
    call("VolumeDriver.Get", json!({"Name": vol}));
    call("VolumeDriver.List", json!({}));
    call("VolumeDriver.Path", json!({"Name": vol}));

    // A backends file change while mounted: a second backend with another key (and wrong
    // credentials for this server, so Create on it fails at the bucket check).
    let spare = Backend {
        name: "spare".into(),
        endpoint: s3.endpoint.clone(),
        access_key: format!("AK{}", random_hex(9)),
        secret_key: other_secret.clone(),
    };
    d.write_backends(&[s3.backend("default"), spare]);
    let spare_vol = unique_name("secret-spare");
    let picked_up = poll(Duration::from_secs(15), || {
        let v = call(
            "VolumeDriver.Create",
            json!({"Name": spare_vol, "Opts": {"bucket": b, "backend": "spare"}}),
        );
        let e = err_text(&v);
        (!e.contains("is not configured")).then_some(e)
    });
    say(&format!("Create on the spare backend: {picked_up:?}"));
    argv_hits.extend(argv_containing(&secrets));

    let v = call("VolumeDriver.Unmount", json!({"Name": vol, "ID": id}));
    assert_eq!(err_text(&v), "", "Unmount: {v}");
    wait_nothing_mounted(&d, "after the Unmount", Duration::from_secs(15));

    // A failed mount: the bucket is gone between Create and Mount.
    let b2 = unique_name("secret-gone");
    let vol2 = unique_name("secret-gone-vol");
    let v = call(
        "VolumeDriver.Create",
        json!({"Name": vol2, "Opts": {"bucket": b2, "create-bucket": "true"}}),
    );
    assert_eq!(err_text(&v), "", "Create {vol2}: {v}");
    delete_bucket(s3, &b2);
    let v = call("VolumeDriver.Mount", json!({"Name": vol2, "ID": new_id()}));
    assert!(
        !err_text(&v).is_empty(),
        "Mount of a volume whose bucket was deleted succeeded: {v}"
    );
    argv_hits.extend(argv_containing(&secrets));
    call("VolumeDriver.Get", json!({"Name": vol2}));
    for name in [&vol, &vol2] {
        let v = call("VolumeDriver.Remove", json!({"Name": name}));
        assert_eq!(err_text(&v), "", "Remove {name}: {v}");
    }
    call("VolumeDriver.Mount", json!({"Name": vol, "ID": id}));
    call("VolumeDriver.List", json!({}));
    argv_hits.extend(argv_containing(&secrets));
    wait_nothing_mounted(&d, "at the end", Duration::from_secs(15));

    let logs = d.logs();
    assert!(
        logs.contains("s3fs mount ready") && logs.contains("TRACE"),
        "the log does not show a trace-level session with a mount: {}",
        d.logs_tail(20)
    );
    let mut problems = Vec::new();
    for s in &secrets {
        let which = if *s == secret {
            "the secret key"
        } else {
            "the second backend's secret key"
        };
        if logs.contains(s) {
            let line = logs.lines().find(|l| l.contains(s)).unwrap_or_default();
            problems.push(format!("{which} is in the daemon's log: {line}"));
        }
        for r in replies.iter().filter(|r| r.contains(s)) {
            problems.push(format!("{which} is in a reply: {r}"));
        }
        let mut files = Vec::new();
        files_under(&d.state_dir, &mut files);
        files_under(&d.mount_root, &mut files);
        assert!(!files.is_empty(), "no file under the state dir at all");
        for (f, mode) in &files {
            let text = String::from_utf8_lossy(&fs::read(f).unwrap_or_default()).into_owned();
            if text.contains(s) {
                problems.push(format!(
                    "{which} is stored in {} (mode {mode:o}{})",
                    f.display(),
                    if mode & 0o077 != 0 {
                        ", readable by others"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    argv_hits.sort();
    argv_hits.dedup();
    for a in &argv_hits {
        problems.push(format!("a secret key is in a command line: {a}"));
    }
    assert!(problems.is_empty(), "secrets:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 7. Mount churn
// ---------------------------------------------------------------------------------------------

/// Mount and Unmount `vol` `n` times, each with a new ID (as container start/stop does).
fn churn(d: &Daemon, vol: &str, n: usize) {
    for i in 0..n {
        let id = new_id();
        let mp = d
            .mount(vol, &id)
            .unwrap_or_else(|e| panic!("cycle {i}: Mount failed: {e}\n{}", d.logs_tail(40)));
        fs::metadata(&mp).unwrap_or_else(|e| panic!("cycle {i}: stat {}: {e}", mp.display()));
        unmount_ok(d, vol, &id);
    }
}

/// "s3fs started" lines in the daemon's log after byte `from`.
fn s3fs_starts(d: &Daemon, from: usize) -> usize {
    let logs = d.logs();
    logs.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("s3fs started"))
        .count()
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn churn_with_unmount_delay_starts_one_s3fs() {
    let Some((s3, d)) = setup_with(
        "churn_with_unmount_delay_starts_one_s3fs",
        &["--unmount-delay", "3"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "churn-delay");
    let vol = unique_name("churn-delay-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let from = d.logs().len();
    let started = Instant::now();
    churn(&d, &vol, 50);
    let took = started.elapsed();
    let starts = s3fs_starts(&d, from);
    let pids = d.s3fs_pids();
    say(&format!(
        "50 cycles with --unmount-delay 3: {took:?}, {starts} s3fs started, alive {pids:?}"
    ));
    assert_eq!(
        starts,
        1,
        "50 Mount/Unmount cycles within the unmount delay started {starts} s3fs\n{}",
        d.logs_tail(40)
    );
    assert_eq!(pids.len(), 1, "s3fs alive during the delay: {pids:?}");
    // The delay then ends the mount on its own.
    let st = d.status(&vol).unwrap();
    assert_eq!(st.get("holders"), Some(&json!(0)), "{st}");
    wait_nothing_mounted(&d, "3 s after the last Unmount", Duration::from_secs(15));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn churn_without_unmount_delay_starts_one_s3fs_per_cycle() {
    let Some((s3, d)) = setup("churn_without_unmount_delay_starts_one_s3fs_per_cycle") else {
        return;
    };
    let b = new_bucket(s3, "churn-nodelay");
    let vol = unique_name("churn-nodelay-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let from = d.logs().len();
    let started = Instant::now();
    churn(&d, &vol, 50);
    let starts = s3fs_starts(&d, from);
    say(&format!(
        "50 cycles without delay: {:?}, {starts} s3fs started",
        started.elapsed()
    ));
    assert_eq!(
        starts,
        50,
        "50 Mount/Unmount cycles without an unmount delay started {starts} s3fs\n{}",
        d.logs_tail(40)
    );
    wait_nothing_mounted(&d, "after the last Unmount", Duration::from_secs(15));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn remove_during_the_unmount_delay_ends_the_wait() {
    let Some((s3, d)) = setup_with(
        "remove_during_the_unmount_delay_ends_the_wait",
        &["--unmount-delay", "30"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "delay-remove");
    let vol = unique_name("delay-remove-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    unmount_ok(&d, &vol, &id);
    assert!(
        is_mountpoint(&mp) && d.s3fs_pids().len() == 1,
        "with --unmount-delay 30 the mount should still be there after the last Unmount"
    );
    let t = Instant::now();
    d.remove(&vol)
        .unwrap_or_else(|e| panic!("Remove during the delay: {e}\n{}", d.logs_tail(30)));
    let took = t.elapsed();
    // Checked at once: Remove returns after the unmount, not before.
    let left = (d.s3fs_pids(), d.mounts().len());
    assert!(
        left.0.is_empty() && left.1 == 0,
        "right after Remove returned ({took:?}): s3fs {:?}, {} mounts\n{}",
        left.0,
        left.1,
        d.logs_tail(30)
    );
    assert!(!d.list_names().contains(&vol), "the volume is still listed");
    assert!(d.get(&vol).is_err(), "Get of the removed volume succeeded");
    assert!(took < Duration::from_secs(10), "Remove took {took:?}");
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn sigterm_during_the_unmount_delay_ends_the_wait() {
    let Some((s3, mut d)) = setup_with(
        "sigterm_during_the_unmount_delay_ends_the_wait",
        &["--unmount-delay", "30"],
    ) else {
        return;
    };
    let b = new_bucket(s3, "delay-term");
    let vol = unique_name("delay-term-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    unmount_ok(&d, &vol, &id);
    assert!(
        is_mountpoint(&mp) && d.s3fs_pids().len() == 1,
        "with --unmount-delay 30 the mount should still be there after the last Unmount"
    );
    let pid = d.pid().unwrap_or(0);
    let took = d.terminate(Duration::from_secs(10));
    let logs = d.logs();
    assert!(
        took.is_some() && logs.contains("SIGTERM"),
        "the daemon ({pid}) did not stop within 10 s of SIGTERM\n{}",
        d.logs_tail(30)
    );
    let left = (d.s3fs_pids(), d.mounts().len());
    assert!(
        left.0.is_empty() && left.1 == 0,
        "after the daemon exited on SIGTERM ({took:?}): s3fs {:?}, {} mounts\n{}",
        left.0,
        left.1,
        d.logs_tail(30)
    );
    // The volume survives the restart, unheld.
    d.restart();
    let st = d.status(&vol).unwrap();
    assert_eq!(st.get("holders"), Some(&json!(0)), "{st}");
    assert_eq!(st.get("mounted"), Some(&json!(false)), "{st}");
}
