//! Names and option values crafted to escape a path or smuggle an s3fs option: refused, naming
//! the offending key or value, with nothing left behind.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::*;
use crate::{list_still_works, mount_root_entries, nothing_changed, shown, state_bytes};

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
