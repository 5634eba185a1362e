//! The driver's one error type. Every message is written for the person who typed the
//! `docker` command: what was wrong, and what is allowed or what to do.
//!
//! An error is not `Clone`: causes keep their own types behind `#[source]`. The one outcome
//! that several callers share (a Mount attempt served for a queue of callers) is shared as an
//! `Arc<Error>`, and each caller gets [`Error::Shared`], which reads as the error itself.

use std::sync::Arc;

use crate::options::OptionError;
use crate::s3check::BucketError;

/// Everything a volume call can fail with; the HTTP layer turns it into `{"Err": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("no such volume {0:?} in bai-s3")]
    NoSuchVolume(String),
    #[error("backend {name:?} is not configured in {path}{}{}", known_list(.known), problem_note(.problem))]
    UnknownBackend {
        name: String,
        path: String,
        known: Vec<String>,
        /// Why the file on disk is not in use, when it is not (the last good one serves).
        problem: Option<String>,
    },
    #[error("volume {name:?} already exists with different options ({}); remove it first or create it with the same options", .differences.join("; "))]
    Conflict {
        name: String,
        differences: Vec<String>,
    },
    #[error("volume {name:?} is in use: its holders have {holders} mount(s) not yet unmounted; stop the containers that use it before removing it")]
    InUse { name: String, holders: u64 },
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// A volume in the state whose stored options this version refuses (an upgrade or a
    /// downgrade changed the rules): it stays listed and keeps its live mounts.
    #[error("volume {name:?} cannot be mounted anew: {}; its live mounts are kept. Remove it when no container uses it (docker volume rm) and create it again", unresolvable(.refused))]
    Unresolvable { name: String, refused: OptionError },
    #[error("mounting volume {name:?} failed: {source}")]
    Mount {
        name: String,
        source: crate::mounter::MountError,
    },
    #[error("bai-s3 could not save its state to {path}: {source}; nothing was changed")]
    Persist {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bai-s3 is shutting down; try again when it is back")]
    ShuttingDown,
    /// The task serving a queued Mount ended without answering it: it panicked, or the
    /// runtime is stopping.
    #[error("internal error in bai-s3: the mount did not finish")]
    MountUnfinished(#[source] tokio::sync::oneshot::error::RecvError),
    /// The task a call ran in ended without an answer (it panicked, or was cancelled).
    #[error("internal error in bai-s3: the call did not finish: {0}")]
    CallUnfinished(#[from] tokio::task::JoinError),
    /// One outcome given to several callers (the Mount attempt a queue of callers shares):
    /// it reads, and chains its causes, as the error itself.
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl Error {
    /// A caller's own copy of a shared outcome: the error itself when nobody else holds it
    /// any more, else [`Error::Shared`].
    pub fn from_shared(e: Arc<Error>) -> Error {
        Arc::try_unwrap(e).unwrap_or_else(Error::Shared)
    }
}

/// Why a stored volume cannot be mounted anew, as Get's `problem` and the Mount's Err say it.
pub fn unresolvable(refused: &OptionError) -> String {
    format!("its stored options are refused by this bai-s3 ({refused})")
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        " (it configures no backend; see README: backends file)".to_string()
    } else {
        format!(" (configured: {})", known.join(", "))
    }
}

fn problem_note(problem: &Option<String>) -> String {
    match problem {
        Some(p) => format!("; the file on disk is not in use: {p}"),
        None => String::new(),
    }
}

/// The driver's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn persist() -> Error {
        Error::Persist {
            path: "/var/lib/bai-s3".into(),
            source: std::io::Error::other("read-only file system"),
        }
    }

    #[test]
    fn a_shared_error_reads_and_chains_as_the_error_itself() {
        let shared = Arc::new(persist());
        let other_caller = Arc::clone(&shared);
        let e = Error::from_shared(shared);
        assert!(matches!(e, Error::Shared(_)), "{e:?}");
        assert_eq!(e.to_string(), persist().to_string());
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("read-only file system")
        );
        drop(e);
        let last = Error::from_shared(other_caller);
        assert!(
            matches!(last, Error::Persist { .. }),
            "the last holder gets the error itself: {last:?}"
        );
    }
}
