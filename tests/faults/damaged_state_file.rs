//! A damaged state file at start: what can be read is served, the damaged file is kept aside and
//! the log says where.

use std::fs;
use std::path::PathBuf;

use crate::lines_matching;
use crate::support::*;

/// Files in the state folder whose names start with `prefix`.
fn kept_copies(d: &Daemon, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(&d.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with(prefix))
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}

/// Three volumes, one of them held by a mount; the daemon stopped.
fn three_volumes(s3: &S3Server, d: &mut Daemon, tag: &str) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..3 {
        let b = new_bucket(s3, tag);
        let v = unique_name(&format!("{tag}{i}"));
        create_ok(d, &v, &[("bucket", &b)]);
        names.push(v);
    }
    d.stop();
    names
}

/// The JSON state file of an earlier version, truncated, is imported as far as it can be read.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn truncated_state_file_serves_what_it_can_and_keeps_a_copy() {
    let Some((s3, mut d)) = setup("truncated_state_file_serves_what_it_can_and_keeps_a_copy")
    else {
        return;
    };
    let names = three_volumes(s3, &mut d, "trunc");
    let path = d.state_dir.join("volumes.json");
    let text = String::from_utf8(downgrade_state_folder(&d.state_dir)).unwrap();
    // The record that comes last in the file, cut in its middle.
    let (last_at, last) = names
        .iter()
        .map(|n| (text.find(&format!("\"{n}\"")).expect("name in state"), n))
        .max()
        .unwrap();
    let cut = last_at + (text.len() - last_at) / 2;
    let truncated = &text.as_bytes()[..cut];
    fs::write(&path, truncated).unwrap();

    d.restart();
    let listed = d.list_names();
    for n in &names {
        if n == last {
            assert!(
                !listed.contains(n),
                "the cut record {n} is listed: {listed:?}"
            );
        } else {
            assert!(
                listed.contains(n),
                "a complete record {n} was not served: {listed:?}\n{}",
                d.logs_tail(30)
            );
            assert!(d.status(n).is_ok());
        }
    }
    let copies = kept_copies(&d, "volumes.json.imported-");
    assert_eq!(copies.len(), 1, "copies of the damaged file: {copies:?}");
    assert_eq!(
        fs::read(&copies[0]).unwrap(),
        truncated,
        "the copy is not the damaged file"
    );
    assert!(!path.exists(), "the imported file was left in place");
    let said = lines_matching(&d, "damaged");
    assert!(
        said.iter()
            .any(|l| l.contains("ERROR") && l.contains(&copies[0].display().to_string())),
        "the log does not say the state file was damaged and where the copy is: {said:#?}\n{}",
        d.logs_tail(30)
    );
    assert!(
        said.iter().any(|l| l.contains("not valid JSON")),
        "the log does not say what could not be read: {said:#?}"
    );
    // The daemon works on: the readable volumes mount.
    let keep = names.iter().find(|n| *n != last).unwrap();
    let id = new_id();
    mount_ok(&d, keep, &id);
    unmount_ok(&d, keep, &id);
    wait_all_unmounted(&d);
}

/// A store that is no database at all: kept aside, the daemon starts on a new one.
#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn garbage_state_file_starts_empty_and_keeps_a_copy() {
    let Some((s3, mut d)) = setup("garbage_state_file_starts_empty_and_keeps_a_copy") else {
        return;
    };
    let names = three_volumes(s3, &mut d, "garbage");
    let path = store_path(&d.state_dir);
    let mut garbage = b"\x00\xffthis is not a state file {{{ \"volumes\": [".to_vec();
    garbage.extend(random_bytes(300));
    fs::write(&path, &garbage).unwrap();
    // The log too: it may hold every page (the daemon need not checkpoint before it ends).
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        fs::write(&wal, random_bytes(5000)).unwrap();
    }

    d.try_restart()
        .unwrap_or_else(|e| panic!("the daemon did not start on a garbage state file: {e}"));
    let listed = d.list_names();
    for n in &names {
        assert!(!listed.contains(n), "{n} listed from garbage: {listed:?}");
    }
    let copies: Vec<PathBuf> = kept_copies(&d, "state.db.corrupt-")
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(copies.len(), 1, "copies of the damaged store: {copies:?}");
    assert_eq!(fs::read(&copies[0]).unwrap(), garbage);
    let said = lines_matching(&d, "damaged");
    assert!(
        said.iter().any(
            |l| l.contains("could not be used") && l.contains(&copies[0].display().to_string())
        ),
        "the log does not say the store could not be read and where the copy is: {said:#?}\n{}",
        d.logs_tail(30)
    );
    // A new Create works and is in the new store; the copy stays.
    let b = new_bucket(s3, "garbage-new");
    let v = unique_name("garbage-new");
    create_ok(&d, &v, &[("bucket", &b)]);
    assert!(store_records(&d.state_dir).contains_key(&v));
    assert_eq!(fs::read(&copies[0]).unwrap(), garbage);
}
