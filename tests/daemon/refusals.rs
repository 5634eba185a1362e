//! Refused Creates and Removes: bad options and names, a missing bucket, a conflicting re-Create,
//! a Remove while held; each names what is wrong and leaves nothing.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::{boolish, wait_unmounted};

/// Checks that a refused Create left nothing behind.
fn assert_nothing_left(d: &Daemon, name: &str, problems: &mut Vec<String>, what: &str) {
    if d.list_names().iter().any(|n| n == name) {
        problems.push(format!("{what}: {name:?} is listed after a refused Create"));
    }
    if let Ok(v) = d.get(name) {
        problems.push(format!(
            "{what}: Get {name:?} succeeded after a refused Create: {v}"
        ));
    }
    if !d.mounts().is_empty() || !d.s3fs_pids().is_empty() {
        problems.push(format!(
            "{what}: something is mounted after a refused Create: {:?}",
            d.mounts()
        ));
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn refused_options_name_the_offending_key_or_value() {
    let Some((s3, d)) = setup("refused_options_name_the_offending_key_or_value") else {
        return;
    };
    let b = new_bucket(s3, "refuse");
    // (options, words the Err must contain)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (vec![("colour", "blue")], vec!["colour"]),
        (vec![("ro", "maybe")], vec!["ro", "maybe"]),
        (
            vec![("create-bucket", "perhaps")],
            vec!["create-bucket", "perhaps"],
        ),
        (vec![("uid", "abc")], vec!["uid", "abc"]),
        (vec![("gid", "-1")], vec!["gid", "-1"]),
        (vec![("umask", "999")], vec!["umask", "999"]),
        (vec![("prefix", "a,allow_other")], vec!["prefix"]),
        (vec![("prefix", "a=b")], vec!["prefix"]),
        (vec![("prefix", "a b")], vec!["prefix"]),
        (vec![("prefix", "../escape")], vec!["prefix"]),
        (vec![("bucket", "x,allow_other")], vec!["bucket"]),
        (vec![("access-key", "AKIAEXAMPLE")], vec!["access-key"]),
        (vec![("secret-key", "wJalrXUtnFEMI")], vec!["secret-key"]),
        (vec![("password", "hunter2")], vec!["password"]),
        (vec![("backend", "nosuchbackend")], vec!["nosuchbackend"]),
        (vec![("bucket", "Bad_Bucket")], vec!["Bad_Bucket"]),
        (vec![("bucket", "ab")], vec!["bucket"]),
    ];
    let mut problems = Vec::new();
    for (i, (opts, words)) in cases.iter().enumerate() {
        let name = format!("{}-{i}", unique_name("ref"));
        let mut all = vec![("bucket", b.as_str())];
        all.retain(|(k, _)| !opts.iter().any(|(k2, _)| k2 == k));
        all.extend(opts.iter().cloned());
        match d.create(&name, &all) {
            Ok(()) => problems.push(format!("{opts:?}: Create succeeded")),
            Err(e) => {
                for w in words {
                    if !e.contains(w) {
                        problems.push(format!("{opts:?}: Err does not name {w:?}: {e}"));
                    }
                }
            }
        }
        assert_nothing_left(&d, &name, &mut problems, &format!("{opts:?}"));
        if d.mountpoint_of(&name).exists() {
            problems.push(format!(
                "{opts:?}: a refused Create left {}",
                d.mountpoint_of(&name).display()
            ));
        }
    }
    assert!(problems.is_empty(), "refusals:\n{}", problems.join("\n"));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn refused_volume_names() {
    let Some((s3, d)) = setup("refused_volume_names") else {
        return;
    };
    let b = new_bucket(s3, "names");
    let long = "a".repeat(300);
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("a/b", Some("a/b")),
        ("..", Some("..")),
        (".", None),
        ("", None),
        (long.as_str(), None),
        ("vf:ro", Some("vf:ro")),
        ("a,b", Some("a,b")),
        ("has space", Some("has space")),
    ];
    let mut problems = Vec::new();
    for (name, word) in &cases {
        let shown = if name.len() > 20 {
            format!("{}...({} chars)", &name[..10], name.len())
        } else {
            name.to_string()
        };
        match d.create(name, &[("bucket", &b)]) {
            Ok(()) => problems.push(format!("volume name {shown:?}: Create succeeded")),
            Err(e) => {
                if let Some(w) = word {
                    if !e.contains(w) {
                        problems.push(format!("volume name {shown:?}: Err does not name it: {e}"));
                    }
                } else if !e.to_lowercase().contains("name") {
                    problems.push(format!(
                        "volume name {shown:?}: Err does not say the name is wrong: {e}"
                    ));
                }
            }
        }
        assert_nothing_left(&d, name, &mut problems, &format!("volume name {shown:?}"));
    }
    // Nothing appeared in the mount root or outside it.
    let entries: Vec<_> = fs::read_dir(&d.mount_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if !entries.is_empty() {
        problems.push(format!(
            "refused names left entries in the mount root: {entries:?}"
        ));
    }
    if d.dir.join("b").exists() {
        problems.push("a refused name created a folder outside the mount root".into());
    }
    assert!(problems.is_empty(), "refusals:\n{}", problems.join("\n"));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn missing_bucket_is_refused_unless_create_bucket() {
    let Some((s3, d)) = setup("missing_bucket_is_refused_unless_create_bucket") else {
        return;
    };
    let b = unique_name("missing");
    let vol = unique_name("missing-vol");
    let e = d
        .create(&vol, &[("bucket", &b)])
        .expect_err("Create of a volume on a missing bucket succeeded");
    assert!(
        e.contains(&b),
        "Err does not name the missing bucket {b}: {e}"
    );
    let mut problems = Vec::new();
    assert_nothing_left(&d, &vol, &mut problems, "missing bucket");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        !s3.s3().bucket_exists(&b).unwrap(),
        "Create without create-bucket created the bucket"
    );

    // The default bucket is the volume's name.
    let e = d
        .create(&b, &[])
        .expect_err("Create with the volume name as a missing bucket succeeded");
    assert!(
        e.contains(&b),
        "Err does not name the missing bucket {b}: {e}"
    );

    create_ok(&d, &vol, &[("bucket", &b), ("create-bucket", "true")]);
    assert!(
        s3.s3().bucket_exists(&b).unwrap(),
        "create-bucket=true did not create the bucket"
    );
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("f"), b"f").unwrap();
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    s3_poll(s3, &b, "f", b"f", Duration::from_secs(10));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn create_again_same_options_ok_different_options_refused() {
    let Some((s3, d)) = setup("create_again_same_options_ok_different_options_refused") else {
        return;
    };
    let b = new_bucket(s3, "again");
    let b2 = new_bucket(s3, "again2");
    let vol = unique_name("again-vol");
    create_ok(&d, &vol, &[("bucket", &b), ("uid", "1000")]);
    create_ok(&d, &vol, &[("bucket", &b), ("uid", "1000")]);
    let e = d
        .create(&vol, &[("bucket", &b), ("uid", "1000"), ("ro", "true")])
        .expect_err("Create again with ro=true added succeeded");
    assert!(
        e.contains("ro"),
        "Err does not name the differing option ro: {e}"
    );
    let e = d
        .create(&vol, &[("bucket", &b2), ("uid", "1000")])
        .expect_err("Create again with another bucket succeeded");
    assert!(
        e.contains("bucket"),
        "Err does not name the differing option bucket: {e}"
    );
    let st = status(&d, &vol);
    assert_eq!(
        st.get("bucket").and_then(Value::as_str),
        Some(b.as_str()),
        "the refused Create changed the volume: {st}"
    );
    assert_eq!(
        boolish(st.get("ro")),
        Some(false),
        "the refused Create changed the volume: {st}"
    );
    assert_eq!(d.list_names().iter().filter(|n| **n == vol).count(), 1);
    d.remove(&vol).unwrap();
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn remove_while_held_is_refused() {
    let Some((s3, d)) = setup("remove_while_held_is_refused") else {
        return;
    };
    let b = new_bucket(s3, "held");
    let vol = unique_name("held-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    fs::write(mp.join("keep.txt"), b"keep").unwrap();
    let e = d
        .remove(&vol)
        .expect_err("Remove of a held volume succeeded");
    assert!(
        e.to_lowercase().contains("holder"),
        "Err does not mention holders: {e}"
    );
    assert!(
        d.list_names().contains(&vol),
        "refused Remove dropped the volume"
    );
    assert!(
        is_mountpoint(&mp) && statvfs_ok(&mp),
        "refused Remove broke the mount"
    );
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    d.remove(&vol).unwrap();
    assert!(!d.list_names().contains(&vol));
    // Remove never deletes data.
    s3_poll(s3, &b, "keep.txt", b"keep", Duration::from_secs(10));
}
