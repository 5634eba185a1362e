//! The mount layer: turns "make volume V appear at this path" into real mounts.
//!
//! The driver decides *when* a volume is mounted (holders, delays, recovery); a [`Mounter`]
//! decides *how*. The real one ([`s3fs::S3fsMounter`]) runs one s3fs per bucket and mount
//! settings and gives each volume a bind mount of it, so many prefix volumes of one bucket cost
//! one process. Nothing here knows about HTTP or Docker.

pub mod bounded;
pub mod resolve;
pub mod s3fs;
pub mod sys;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
pub mod fakesys;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::backends::Backend;
use crate::options::VolumeOptions;

/// Everything needed to mount one volume, resolved at the moment of the Mount (so a changed
/// backends file applies to new mounts only).
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub volume: String,
    pub options: VolumeOptions,
    pub backend: Backend,
    /// Where the volume must appear: `<mount-root>/<volume>`.
    pub target: PathBuf,
}

/// A mount's liveness as far as it can be told without touching the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Mounted and alive, but its s3fs did not answer the last probe in time (a stalled store,
    /// a stopped process). Left alone: slow is not dead, and its writers keep their files.
    Slow,
    /// Mounted, but its s3fs is gone or its FUSE connection answers ENOTCONN.
    Stale,
    NotMounted,
}

impl Health {
    /// The word `docker volume inspect` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Slow => "slow",
            Health::Stale => "stale",
            Health::NotMounted => "not mounted",
        }
    }
}

/// Why a mount or unmount failed: each kind carries what the person who ran the container
/// needs to act on it, and says whose part failed ([`MountError::cause`]), so that nothing
/// downstream has to read the words.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot start {program}: {error} (is s3fs installed?)")]
    Spawn {
        program: String,
        #[source]
        error: std::io::Error,
    },
    /// `said` is the tail of s3fs's own log: the reason (wrong keys, no such bucket) is there.
    #[error("s3fs exited before the mount was ready: {said}")]
    Exited { said: String },
    #[error("s3fs did not make the mount ready within {} s (--mount-timeout); s3fs said: {said}", .after.as_secs())]
    NeverReady { after: Duration, said: String },
    /// A running shared s3fs did not answer: slow is not dead, so it is left to its volumes.
    #[error("the s3fs of bucket {bucket:?} did not answer within {} s (--mount-timeout); it is left running for the volumes that use it (a stalled or throttling store?)", .after.as_secs())]
    SharedUnanswered { bucket: String, after: Duration },
    #[error("the mount did not answer within {} s (--mount-timeout)", .after.as_secs())]
    Deadline { after: Duration },
    /// The work behind a Mount that had already been answered with [`MountError::Deadline`].
    #[error("the mount was given up at its deadline")]
    GivenUp,
    /// Starting one more s3fs would pass the operator's `--max-mounts`; joining a running one
    /// is never refused.
    #[error("bucket {bucket:?} needs an s3fs of its own, but {mounted} of at most {max} are mounted on this host (--max-mounts, BAI_S3_MAX_MOUNTS); unmount another bucket's volumes or raise the limit")]
    Limit {
        bucket: String,
        mounted: usize,
        max: usize,
    },
    #[error(transparent)]
    Prefix(#[from] resolve::PrefixError),
    #[error("the shared s3fs {name} runs with other settings than volume {volume:?} asks for; not joined")]
    OtherSettings { name: String, volume: String },
    /// `found` is what the mount table showed at the target instead.
    #[error("the bind at {} is not a view of the bucket's s3fs (mount table: {}); it was undone", .target.display(), shown(.found))]
    NotAView {
        target: PathBuf,
        found: Option<Box<sys::MountEntry>>,
    },
    /// An s3fs of ours (by the kernel's word) at a shared mount no volume uses, still there at
    /// the Mount's deadline after SIGKILL (stuck in the kernel, or started again and again).
    #[error("an s3fs of bai-s3 (pid {pid}) still ran at {} when the Mount's {} s (--mount-timeout) were up: it was killed but did not exit, or another took its place; no second s3fs is started there", .path.display(), .after.as_secs())]
    InTheWay {
        pid: u32,
        path: PathBuf,
        after: Duration,
    },
    #[error("{} is still mounted by something else and cannot be cleared", .target.display())]
    StillMounted { target: PathBuf },
    /// A local step (a folder, a log file) failed: what was being done, and the system's answer.
    #[error("{doing}: {error}")]
    Host {
        doing: String,
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Table(#[from] sys::TableError),
    #[error("mount task failed: {0}")]
    Task(#[source] bounded::Unanswered),
}

/// Whose part of a Mount failed, for the operator's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// s3fs itself: it did not start or exited (its words say why).
    S3fs,
    /// A deadline (`--mount-timeout`) passed.
    Timeout,
    /// The volume's prefix is not a folder in the bucket (or is missing for a read-only one).
    Prefix,
    /// A local step: folders, binds, the mount table.
    System,
    /// The operator's `--max-mounts` was reached.
    Limit,
}

impl MountError {
    /// Whose part failed.
    pub fn cause(&self) -> Cause {
        match self {
            MountError::Spawn { .. } | MountError::Exited { .. } => Cause::S3fs,
            MountError::NeverReady { .. }
            | MountError::SharedUnanswered { .. }
            | MountError::InTheWay { .. }
            | MountError::Deadline { .. }
            | MountError::GivenUp => Cause::Timeout,
            MountError::Prefix(_) => Cause::Prefix,
            MountError::Limit { .. } => Cause::Limit,
            MountError::OtherSettings { .. }
            | MountError::NotAView { .. }
            | MountError::StillMounted { .. }
            | MountError::Host { .. }
            | MountError::Table(_)
            | MountError::Task(_) => Cause::System,
        }
    }

    /// A local step that failed, with the system's answer (kept as the error's source).
    pub fn host(
        doing: impl Into<String>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        MountError::Host {
            doing: doing.into(),
            error: error.into(),
        }
    }
}

/// What the mount table showed where a view of a bucket was expected.
fn shown(found: &Option<Box<sys::MountEntry>>) -> String {
    match found {
        Some(b) => format!("device {} folder {}", b.dev, b.root.display()),
        None => "nothing mounted".to_string(),
    }
}

/// What a restarted daemon found at a held volume's mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// A live bind of a live s3fs: taken over; `shared` names that s3fs's mount.
    Live { shared: String },
    /// Something of ours is there but its s3fs is gone: mount again when the volume can be.
    Dead,
    /// Nothing is mounted there.
    Absent,
}

/// What a mounter's s3fs processes cost the host, for the metrics scrape: read through the
/// mounter (and its [`sys::Sys`]), so the scrape never reads `/proc` itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live s3fs processes the mounter holds (started or adopted, so proven its own).
    pub s3fs_processes: u64,
    /// Their resident memory (`VmRSS`), summed, in bytes.
    pub s3fs_resident_bytes: u64,
}

/// How volumes are mounted; the seam between counting (driver) and processes (s3fs).
pub trait Mounter: Send + Sync + 'static {
    /// Make the volume appear at `spec.target`, returning only when its root answers, with the
    /// name of the shared mount it is a view of (persisted, for [`Mounter::adopt`]). On error
    /// nothing is left behind: no process, no mount, no folder.
    fn mount(&self, spec: &MountSpec) -> impl Future<Output = Result<String, MountError>> + Send;

    /// Take the volume away from `target` (and stop its s3fs when no volume uses it any more).
    /// Tolerates a target that is already gone or dead.
    fn unmount(
        &self,
        target: &std::path::Path,
    ) -> impl Future<Output = Result<(), MountError>> + Send;

    /// After a restart: take over a mount still alive at `target`, without starting anything
    /// and without the volume's options or backend (the backends file may be broken or
    /// changed meanwhile; the live mount must survive that). `shared` is the shared mount the
    /// state recorded, when it did.
    fn adopt(
        &self,
        target: &std::path::Path,
        shared: Option<&str>,
    ) -> impl Future<Output = Adoption> + Send;

    /// Liveness from what is known without a system call into the FUSE mount (cheap enough for
    /// every Get and List).
    fn health(&self, target: &std::path::Path) -> Health;

    /// Liveness by asking the mount itself (statvfs), bounded in time; for periodic checks.
    /// Only a gone FUSE connection or a gone s3fs is `Stale`; no answer in time is `Slow`.
    fn probe(&self, target: &std::path::Path) -> impl Future<Output = Health> + Send;

    /// Remove what earlier runs left under the mount root, where provably ours and not used by
    /// any target in `keep` (every held volume's, whatever state its mount is in).
    fn sweep(&self, keep: &[PathBuf]) -> impl Future<Output = ()> + Send;

    /// The s3fs processes this mounter holds and their memory, now (cheap: no call into a
    /// FUSE mount).
    fn usage(&self) -> Usage;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_kept_as_sources_and_the_words_stay() {
        let e = MountError::Spawn {
            program: "s3fs".into(),
            error: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "cannot start s3fs: No such file or directory (os error 2) (is s3fs installed?)"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));

        let e = MountError::host(
            "cannot open the mount root",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(
            e.to_string(),
            "cannot open the mount root: permission denied"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::PermissionDenied)
        );

        let e = MountError::Task(bounded::Unanswered::Panicked);
        assert_eq!(e.to_string(), "mount task failed: the call panicked");
        assert!(e.source().is_some_and(|s| s.is::<bounded::Unanswered>()));

        let e = MountError::Table(sys::TableError::Unmount {
            path: "/m/v".into(),
            errno: nix::errno::Errno::EBUSY,
        });
        assert_eq!(
            e.to_string(),
            "unmount of /m/v failed: Device or resource busy"
        );
        assert_eq!(
            e.source()
                .and_then(|s| s.downcast_ref::<nix::errno::Errno>()),
            Some(&nix::errno::Errno::EBUSY)
        );

        let entry = sys::MountEntry {
            dev: "0:52".into(),
            root: "/other".into(),
            mount_point: "/m/v".into(),
            fs_type: "fuse.s3fs".into(),
        };
        let e = MountError::NotAView {
            target: "/m/v".into(),
            found: Some(Box::new(entry)),
        };
        assert_eq!(e.to_string(), "the bind at /m/v is not a view of the bucket's s3fs (mount table: device 0:52 folder /other); it was undone");
        let e = MountError::NotAView {
            target: "/m/v".into(),
            found: None,
        };
        assert!(
            e.to_string().contains("(mount table: nothing mounted)"),
            "{e}"
        );
    }
}
