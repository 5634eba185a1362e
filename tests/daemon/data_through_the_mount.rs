//! Data both ways: a file written through the mount becomes an object, an object put through S3
//! appears in the mount.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::support::*;
use crate::wait_unmounted;

fn read_poll(path: &Path, want: &[u8]) {
    let got = poll(Duration::from_secs(10), || match fs::read(path) {
        Ok(b) if b == want => Some(()),
        _ => None,
    });
    if got.is_none() {
        panic!(
            "{} does not read back {:?}: {:?}",
            path.display(),
            String::from_utf8_lossy(want),
            fs::read(path)
        );
    }
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn file_written_through_the_mount_appears_as_an_object() {
    let Some((s3, d)) = setup("file_written_through_the_mount_appears_as_an_object") else {
        return;
    };
    let b = new_bucket(s3, "write");
    let vol = unique_name("write-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    let data = random_bytes(200_000);
    fs::write(mp.join("hello.bin"), &data).unwrap();
    fs::create_dir(mp.join("sub")).unwrap();
    fs::write(mp.join("sub/note.txt"), b"in a folder").unwrap();
    s3_poll(s3, &b, "hello.bin", &data, Duration::from_secs(10));
    s3_poll(
        s3,
        &b,
        "sub/note.txt",
        b"in a folder",
        Duration::from_secs(10),
    );
    assert_eq!(fs::read(mp.join("hello.bin")).unwrap(), data);
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
    // The data stays in the bucket.
    s3_poll(s3, &b, "hello.bin", &data, Duration::from_secs(10));
}

#[test]
#[cfg_attr(not(bai_s3_integration), ignore = "needs root, FUSE, s3fs, SeaweedFS")]
fn object_put_through_s3_appears_in_the_mount() {
    let Some((s3, d)) = setup("object_put_through_s3_appears_in_the_mount") else {
        return;
    };
    let b = new_bucket(s3, "read");
    s3.s3().put(&b, "before.txt", b"put before mount").unwrap();
    s3.s3().put(&b, "dir/deep.txt", b"deep").unwrap();
    let vol = unique_name("read-vol");
    create_ok(&d, &vol, &[("bucket", &b)]);
    let id = new_id();
    let mp = mount_ok(&d, &vol, &id);
    assert_eq!(
        fs::read(mp.join("before.txt")).unwrap(),
        b"put before mount"
    );
    assert_eq!(fs::read(mp.join("dir/deep.txt")).unwrap(), b"deep");
    let mut names: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["before.txt", "dir"], "listing of the mount");
    s3.s3().put(&b, "after.txt", b"put after mount").unwrap();
    read_poll(&mp.join("after.txt"), b"put after mount");
    unmount_ok(&d, &vol, &id);
    wait_unmounted(&d, &mp);
}
