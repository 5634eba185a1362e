//! The driver's one error type. Every message is written for the person who typed the
//! `docker` command: what was wrong, and what is allowed or what to do.

use crate::options::OptionError;
use crate::s3check::BucketError;

/// Everything a volume call can fail with; the HTTP layer turns it into `{"Err": ...}`.
#[derive(Debug, Clone, thiserror::Error)]
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
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("bai-s3 is shutting down; try again when it is back")]
    ShuttingDown,
    #[error("internal error in bai-s3: {0}")]
    Internal(String),
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
