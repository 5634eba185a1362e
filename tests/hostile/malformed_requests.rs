//! Malformed and oversized requests: every refusal is an HTTP error status with an `Err` that
//! says what was wrong, and nothing is mounted, written or persisted.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;
use crate::{err_text, list_still_works, mount_root_entries, nothing_changed, shown, state_bytes};

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
    s3.s3()
        .delete_bucket(&gone)
        .unwrap_or_else(|e| panic!("delete bucket {gone}: {e}"));
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
