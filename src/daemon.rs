//! Putting the daemon together: logging, the pieces of the driver, the socket first and the
//! restore after, then serving until SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use crate::backends::Backends;
use crate::cli::{LogFormat, ServeArgs};
use crate::driver::{Driver, Settings};
use crate::fsutil::DirError;
use crate::mounter::s3fs::{S3fsConfig, S3fsMounter};
use crate::mounter::Mounter;
use crate::s3check::S3Checker;
use crate::state::{Store, StoreError};

/// A `--log-level` that is no tracing filter: refused at start rather than logging at some
/// default the operator did not ask for.
#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level {level:?}: {source} (use error, warn, info, debug or trace)")]
pub struct LogLevelError {
    pub level: String,
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Why `bai-s3 serve` did not start or stopped serving. Each message is what the operator reads
/// on stderr (and in the log): which folder, socket or setting, and the system's answer.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A folder of the daemon's own is unsafe (a link, not root's, open to others) or overlaps
    /// another; it is refused as it is, never repaired.
    #[error("refusing to start: {0}")]
    Folders(#[source] DirError),
    /// Another daemon holds the state folder: the system's answer names it and its pid.
    #[error("{0}")]
    StateTaken(#[source] StoreError),
    #[error("cannot open state folder {}: {source}", .path.display())]
    State {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot create mount root {}: {source}", .path.display())]
    MountRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {}: {source}", .path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SIGTERM or SIGINT could not be watched, so the daemon could not stop cleanly.
    #[error("{0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot listen for metrics on {addr} (--metrics-addr): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a scrape shows, taken from the driver's read-only view: metrics knows nothing of the
/// driver's or the mounter's types.
fn metrics_sample<M: Mounter>(d: &Driver<M>) -> crate::metrics::Sample {
    use crate::mounter::Health;
    let mut s = crate::metrics::Sample::default();
    for v in d.list() {
        s.volumes += 1;
        s.holders += v.status.holders;
        // An exhaustive match: a new health must be placed here before it compiles.
        match v.status.health {
            Health::Ok => s.mounts.ok += 1,
            Health::Slow => s.mounts.slow += 1,
            Health::Stale => s.mounts.stale += 1,
            Health::NotMounted => {}
        }
    }
    let usage = d.usage();
    s.s3fs_processes = usage.s3fs_processes;
    s.s3fs_resident_bytes = usage.s3fs_resident_bytes;
    s
}

/// Set up logging to stderr. A bad `--log-level` is an error, not a silent default.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), LogLevelError> {
    let filter = EnvFilter::try_new(level).map_err(|source| LogLevelError {
        level: level.to_string(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    Ok(())
}

/// Raise the soft limit of open files to the hard one. The daemon holds a pidfd and a child
/// watcher per s3fs, so hundreds of buckets pass the soft limit of 1024 that containers get by
/// default (Docker 25 and later) and every further Mount would fail with EMFILE; Go programs
/// (rclone) raise it the same way at start. Children inherit it: s3fs itself needs few.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open files limit raised"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Run `bai-s3 serve` until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    raise_open_files_limit();
    // Before anything is written: folders that are links, not root's, or open to others are
    // refused as they are (never chmod-ed); missing ones are made 0700.
    crate::fsutil::check_layout(&args.state_dir, &args.mount_root, &args.config)
        .map_err(ServeError::Folders)?;
    let name_key = crate::fsutil::prepare_daemon_folders(&args.state_dir, &args.mount_root)
        .map_err(ServeError::Folders)?;
    let (store, report) = Store::open(&args.state_dir).map_err(|source| match source.kind() {
        // Another daemon has the folder: the message names it and its pid.
        std::io::ErrorKind::WouldBlock => ServeError::StateTaken(source),
        _ => ServeError::State {
            path: args.state_dir.clone(),
            source,
        },
    })?;
    if !report.problems.is_empty() {
        tracing::error!(
            problems = report.problems.len(),
            "state was damaged; see the lines above"
        );
    }
    std::fs::create_dir_all(&args.mount_root).map_err(|source| ServeError::MountRoot {
        path: args.mount_root.clone(),
        source,
    })?;
    let backends = Backends::open(&args.config);
    let mounter = S3fsMounter::new(S3fsConfig {
        mount_root: args.mount_root.clone(),
        state_dir: args.state_dir.clone(),
        mount_timeout: Duration::from_secs(args.mount_timeout),
        program: args.s3fs.clone(),
        min_disk_free: args.min_disk_free,
        max_mounts: args.max_mounts,
        name_key,
    });
    let checker = Box::new(S3Checker {
        timeout: Duration::from_secs(args.check_timeout),
    });
    let driver = Driver::new(
        mounter,
        checker,
        backends,
        store,
        Settings {
            mount_root: args.mount_root.clone(),
            unmount_delay: Duration::from_secs(args.unmount_delay),
        },
    );
    if let Some(p) = driver.backends_problem() {
        tracing::warn!(problem = %p, "no usable backends file yet; Create and Mount will fail until it is fixed");
    }

    if let Some(addr) = args.metrics_addr {
        let listener = crate::metrics::bind(addr)
            .await
            .map_err(|source| ServeError::Metrics { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError::Metrics { addr, source })?;
        let d = Arc::clone(&driver);
        let registry = crate::metrics::registry(crate::metrics::Sources {
            sample: Box::new(move || metrics_sample(&d)),
            max_mounts: args.max_mounts,
        });
        tokio::spawn(crate::metrics::serve(listener, registry));
        tracing::info!(addr = %bound, "metrics listening at /metrics");
    }

    // Listen first: dockerd gives a plugin about 10 s to answer, and restoring mounts may
    // take longer than that.
    let listener = crate::server::bind(&args.socket).map_err(|source| ServeError::Socket {
        path: args.socket.clone(),
        source,
    })?;
    tracing::info!(socket = %args.socket.display(), version = env!("CARGO_PKG_VERSION"), "bai-s3 listening");

    let d = Arc::clone(&driver);
    tokio::spawn(async move { d.restore().await });
    let d = Arc::clone(&driver);
    let interval = Duration::from_secs(args.health_interval);
    tokio::spawn(async move {
        d.restored().await;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            d.check_health().await;
        }
    });

    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    crate::server::serve(listener, Arc::clone(&driver), shutdown).await;
    driver.shutdown().await;
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("stopped; mounts in use are left in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The operator reads these on stderr, and scripts may match them: word for word what the
    /// daemon said before its errors were typed, with the system's answer kept as the cause.
    #[test]
    fn start_up_errors_say_what_and_keep_the_cause() {
        let io = || std::io::Error::other("permission denied");
        let cases = [
            (
                ServeError::State {
                    path: "/var/lib/bai-s3".into(),
                    source: io().into(),
                },
                "cannot open state folder /var/lib/bai-s3: permission denied",
            ),
            (
                ServeError::MountRoot {
                    path: "/var/lib/bai-s3/volumes".into(),
                    source: io(),
                },
                "cannot create mount root /var/lib/bai-s3/volumes: permission denied",
            ),
            (
                ServeError::Socket {
                    path: "/run/docker/plugins/bai-s3.sock".into(),
                    source: io(),
                },
                "cannot listen on /run/docker/plugins/bai-s3.sock: permission denied",
            ),
            (ServeError::StateTaken(io().into()), "permission denied"),
            (ServeError::Signals(io()), "permission denied"),
        ];
        for (e, said) in cases {
            assert_eq!(e.to_string(), said);
            let cause = e.source().map(|s| s.to_string());
            assert_eq!(cause.as_deref(), Some("permission denied"), "{e:?}");
        }
        let folders = ServeError::Folders(DirError::Symlink {
            path: "/var/lib/bai-s3".into(),
        });
        assert!(
            folders
                .to_string()
                .starts_with("refusing to start: /var/lib/bai-s3 is a symbolic link"),
            "{folders}"
        );
        assert!(folders.source().is_some());
    }

    #[test]
    fn a_bad_log_level_is_refused_with_its_cause() {
        let e = init_logging("bai_s3=[", LogFormat::Text).unwrap_err();
        let said = e.to_string();
        assert!(
            said.starts_with("invalid --log-level \"bai_s3=[\": "),
            "{said}"
        );
        assert!(
            said.ends_with(" (use error, warn, info, debug or trace)"),
            "{said}"
        );
        let cause = e.source().map(|s| s.to_string()).unwrap_or_default();
        assert!(
            !cause.is_empty() && said.contains(&cause),
            "{said} / {cause}"
        );
    }
}
