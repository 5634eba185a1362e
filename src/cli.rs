//! The command line: `bai-s3 serve` with its settings (each with an environment equivalent, so
//! that `docker plugin set bai-s3 KEY=VALUE` works) and `bai-s3 supervise`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// S3 buckets as Docker volumes: a Docker volume plugin that mounts buckets with s3fs.
#[derive(Debug, Parser)]
#[command(name = "bai-s3", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Docker volume plugin protocol on a unix socket.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Run `serve` and start it again when it dies, leaving its s3fs mounts alive (the managed
    /// plugin's entry point, under tini).
    #[command(args_override_self = true)]
    Supervise(ServeArgs),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The daemon's settings (README: "Daemon settings").
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Unix socket dockerd connects to.
    #[arg(
        long,
        env = "BAI_S3_SOCKET",
        default_value = "/run/docker/plugins/bai-s3.sock"
    )]
    pub socket: PathBuf,
    /// Folder of the persistent state (volumes, holders) and s3fs logs; root-only.
    #[arg(long, env = "BAI_S3_STATE_DIR", default_value = "/var/lib/bai-s3")]
    pub state_dir: PathBuf,
    /// Folder under which volumes are mounted (the managed plugin's propagatedMount).
    #[arg(
        long,
        env = "BAI_S3_MOUNT_ROOT",
        default_value = "/var/lib/bai-s3/volumes"
    )]
    pub mount_root: PathBuf,
    /// The backends file (TOML, mode 0600): S3 endpoints and credentials.
    #[arg(
        long,
        env = "BAI_S3_CONFIG",
        default_value = "/etc/bai-s3/backends.toml"
    )]
    pub config: PathBuf,
    /// Seconds a Mount may take (s3fs start and first answer) before it fails.
    #[arg(long, env = "BAI_S3_MOUNT_TIMEOUT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub mount_timeout: u64,
    /// Seconds a volume stays mounted after its last holder left, so that quick container
    /// restarts reuse the mount.
    #[arg(long, env = "BAI_S3_UNMOUNT_DELAY", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub unmount_delay: u64,
    /// Seconds between health checks of mounted volumes (a dead s3fs is mounted again).
    #[arg(long, env = "BAI_S3_HEALTH_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub health_interval: u64,
    /// Seconds the bucket check at Create may take.
    #[arg(long, env = "BAI_S3_CHECK_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub check_timeout: u64,
    /// MiB that s3fs keeps free on the state folder's disk, where it stages open files and
    /// caches: a bigger write gets ENOSPC (or streams out) instead of filling the disk. s3fs
    /// raises it to the volume's multipart size, and needs this plus parallel-count ×
    /// multipart-size free to start.
    #[arg(long, env = "BAI_S3_MIN_DISK_FREE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub min_disk_free: u64,
    /// Most s3fs processes (distinct buckets and settings) mounted at once; a Mount that
    /// would start one more fails, while more volumes of a mounted bucket are always served.
    /// 0: no limit.
    #[arg(long, env = "BAI_S3_MAX_MOUNTS", default_value_t = 0)]
    pub max_mounts: usize,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, env = "BAI_S3_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "BAI_S3_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9108); off when
    /// empty.
    #[arg(long, env = "BAI_S3_METRICS_ADDR", value_name = "ADDR:PORT", default_value = "", hide_default_value = true, value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: ::std::option::Option<std::net::SocketAddr>,
    /// The s3fs program.
    #[arg(long, env = "BAI_S3_S3FS", default_value = "s3fs", hide = true)]
    pub s3fs: String,
}
