//! A volume's prefix, resolved inside its bucket's own file system and only there.
//!
//! Whoever can write to a bucket can make any name in it a symbolic link (through a mount, or
//! as an object with s3fs's symlink metadata), and s3fs shows such a link to root, who would
//! follow it into the host. So a prefix is opened component by component from an fd of the
//! shared s3fs mount's root ([`crate::fsutil::open_beneath`]: no link, no `..`, no other file
//! system), missing folders are made on those fds (never for a read-only volume), the bind is
//! made from the fd that walk returned, and the mount table must then show the new mount as a
//! view of that very s3fs.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::fsutil::{self, Beneath, BeneathError};

use super::sys::{self, Sys};
use super::MountError;

/// Open the folder `prefix` of the s3fs mount at `shared` (its root when `prefix` is None),
/// creating missing folders unless `read_only`.
pub fn open_prefix(
    shared: &Path,
    bucket: &str,
    prefix: Option<&str>,
    read_only: bool,
) -> Result<OwnedFd, MountError> {
    let root = fsutil::open_dir(shared)
        .map_err(|e| MountError::host("cannot open the bucket's s3fs mount", e))?;
    let Some(prefix) = prefix else {
        return Ok(root);
    };
    let mode = (!read_only).then_some(0o755);
    fsutil::open_beneath(root.as_fd(), Path::new(prefix), mode, true).map_err(|error| {
        MountError::Prefix(PrefixError {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            read_only,
            error,
        })
    })
}

/// A prefix that could not be resolved inside its bucket, and where the walk stopped.
#[derive(Debug, thiserror::Error)]
#[error("{}", explain(.error, .bucket, .prefix, *.read_only))]
pub struct PrefixError {
    pub bucket: String,
    pub prefix: String,
    /// A read-only volume never creates its prefix, so a missing one is its own refusal.
    pub read_only: bool,
    #[source]
    pub error: BeneathError,
}

/// The Err text of a prefix that could not be resolved: names the component and the rule.
fn explain(e: &BeneathError, bucket: &str, prefix: &str, read_only: bool) -> String {
    let c = &e.component;
    let rule = "a prefix must be a folder in the bucket";
    match &e.kind {
        Beneath::Missing if read_only => format!(
            "prefix {prefix:?} does not exist in bucket {bucket:?} (no folder {c:?}), and a read-only volume never creates it: create the folder through a writable volume, or as an object {:?} with an S3 client",
            format!("{prefix}/")
        ),
        Beneath::Symlink => format!(
            "prefix {prefix:?} of bucket {bucket:?} is refused: {c:?} is a symbolic link; {rule}, and bai-s3 follows no link out of it"
        ),
        Beneath::NotDir => {
            format!("prefix {prefix:?} of bucket {bucket:?} is refused: {c:?} is a file; {rule}")
        }
        Beneath::OtherFs | Beneath::NotPlain => format!(
            "prefix {prefix:?} of bucket {bucket:?} is refused: {c:?} is not part of the bucket; {rule}"
        ),
        Beneath::Missing | Beneath::Io(_) => format!(
            "prefix {prefix:?} does not exist in bucket {bucket:?} and could not be created: {e}"
        ),
    }
}

/// After the bind: the mount at `target` must be a view of the s3fs mounted at `shared` (the
/// same device) of exactly `prefix`; anything else is undone (through `sy`, the system the bind
/// was made on) and an error.
pub fn check_view<S: Sys>(
    sy: &S,
    target: &Path,
    shared: &Path,
    prefix: Option<&str>,
) -> Result<(), MountError> {
    let table = sy.mounts();
    let want_root = PathBuf::from("/").join(prefix.unwrap_or(""));
    let shared_dev = sys::mount_at(&table, shared).map(|m| m.dev);
    let bound = sys::mount_at(&table, target);
    match (&shared_dev, &bound) {
        (Some(dev), Some(b)) if *dev == b.dev && b.root == want_root => Ok(()),
        _ => {
            let _ = sy.unmount(target);
            Err(MountError::NotAView {
                target: target.to_path_buf(),
                found: bound.map(Box::new),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_component_and_the_rule() {
        let e = BeneathError {
            component: "real/inner".into(),
            kind: Beneath::Symlink,
        };
        let m = explain(&e, "b", "real/inner/x", false);
        assert!(m.contains("\"real/inner\" is a symbolic link"), "{m}");
        assert!(m.contains("a prefix must be a folder in the bucket"), "{m}");
        let e = BeneathError {
            component: "p".into(),
            kind: Beneath::Missing,
        };
        let m = explain(&e, "b", "p/q", true);
        assert!(m.contains("read-only volume never creates it"), "{m}");
    }

    #[test]
    fn a_prefix_through_a_link_is_refused_and_makes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(out.path(), t.path().join("lnk")).unwrap();
        let e = open_prefix(t.path(), "b", Some("lnk/sub"), false).unwrap_err();
        assert!(e.to_string().contains("\"lnk\" is a symbolic link"), "{e}");
        assert!(!out.path().join("sub").exists());
        let e = open_prefix(t.path(), "b", Some("missing/x"), true).unwrap_err();
        assert!(e.to_string().contains("never creates it"), "{e}");
        assert!(!t.path().join("missing").exists());
        assert!(open_prefix(t.path(), "b", Some("made/x"), false).is_ok());
        assert!(t.path().join("made/x").is_dir());
    }
}
