//! The Python client kit (`clients/python`) writes the backends file the daemon reads. One
//! backend the kit writes and the daemon refuses makes the daemon refuse the whole file (and keep
//! its last good one), so the kit must refuse exactly what the daemon refuses: every case here
//! goes through the kit's `Backend.check` and, written by the kit's own serializer, through the
//! daemon's parser (`bai_s3::backends::parse`), and the two verdicts must agree.
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::*;

/// The kit's verdict on each case: `None` when `check` accepts it, else its message; and the
/// file text the kit's serializer writes for it (checked or not).
fn kit_verdicts(python: &std::path::Path, cases: &Value) -> Vec<(Option<String>, String)> {
    let script = r#"
import json, sys
from bai_s3_client.backends import Backend, BackendsFileError, dumps
out = []
for c in json.load(sys.stdin):
    b = Backend(**c["backend"])
    try:
        b.check(c["name"])
        verdict = None
    except BackendsFileError as e:
        verdict = str(e)
    out.append([verdict, dumps({c["name"]: b.to_table()})])
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .current_dir(repo().join("clients/python"))
        .env("PYTHONPATH", repo().join("clients/python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client kit's python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the kit's script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the kit's verdicts as JSON")
}

#[test]
fn the_kit_refuses_exactly_what_the_daemon_refuses() {
    let python = repo().join("clients/python/.venv/bin/python");
    let missing: Vec<String> = if python.is_file() {
        vec![]
    } else {
        vec![format!("{} (scripts/deps.sh client)", python.display())]
    };
    if !require("the_kit_refuses_exactly_what_the_daemon_refuses", &missing) {
        return;
    }
    let good = json!({"endpoint": "http://127.0.0.1:8333", "access_key": "AK", "secret_key": "SK-very-secret"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let mut cases = vec![json!({"name": "default", "backend": good})];
    for endpoint in [
        "https://s3.example.com",
        "http://127.0.0.1:8333/a@b",
        "http://admin:SK-very-secret@127.0.0.1:8333",
        "https://SK-very-secret@s3.example.com/path",
        "http://u@h?x",
        "s3.example.com",
        "ftp://host",
        "",
        "http://a,b",
        "http://a b",
        "http://a\tb",
        "http://a\u{7f}b",
        "http://h\u{a0}x",
        "http://h\u{202e}x",
        "http://h\u{85}x",
    ] {
        cases.push(json!({"name": "e", "backend": with("endpoint", json!(endpoint))}));
    }
    for region in ["eu-west-1", "", "us east", "a,b", "r\n"] {
        cases.push(json!({"name": "r", "backend": with("region", json!(region))}));
    }
    for (k, v) in [
        ("access_key", ""),
        ("secret_key", ""),
        ("access_key", "a\nb"),
        ("secret_key", "s\u{1}s"),
        ("secret_key", "with space and \"quotes\" \\"),
        ("secret_key", "s\u{9f}s"),
        ("secret_key", "s\u{202e}s"),
    ] {
        cases.push(json!({"name": "k", "backend": with(k, json!(v))}));
    }
    for name in [
        "bad name",
        "-x",
        "_x",
        "a.b",
        "ok_1-2",
        &"a".repeat(64),
        &"a".repeat(65),
    ] {
        cases.push(json!({"name": name, "backend": good}));
    }
    let cases = Value::Array(cases);
    let verdicts = kit_verdicts(&python, &cases);
    let mut disagree = Vec::new();
    for (case, (kit, text)) in cases.as_array().unwrap().iter().zip(&verdicts) {
        let daemon = bai_s3::backends::parse("backends.toml", text)
            .err()
            .map(|e| e.to_string());
        for said in [kit, &daemon].into_iter().flatten() {
            assert!(
                !said.contains("SK-very-secret"),
                "a refusal quotes the secret: {said}"
            );
        }
        if kit.is_some() != daemon.is_some() {
            disagree.push(format!(
                "{case}: kit {}, daemon {}",
                kit.as_deref().unwrap_or("accepts"),
                daemon.as_deref().unwrap_or("accepts")
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "the kit and the daemon disagree:\n{}",
        disagree.join("\n")
    );
    // The cases bite both ways: some are accepted and some refused.
    let refused = verdicts.iter().filter(|(k, _)| k.is_some()).count();
    assert!(
        refused > 10 && refused < verdicts.len() - 3,
        "{refused} refused"
    );
}
