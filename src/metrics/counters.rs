//! The process-wide counters and histograms: the server and the driver bump them with one call
//! each ([`record_call`], [`mount_failed`], [`repaired`], [`adopted`]), so a call site needs no
//! handle passed down.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::mounter::Cause;

/// The endpoints of the plugin protocol, as they appear in the `endpoint` label; any other
/// request path is counted as `other`.
const ENDPOINTS: &[&str] = &[
    "Plugin.Activate",
    "VolumeDriver.Capabilities",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
];

/// Call latency buckets in seconds: a hot Mount takes well under a millisecond, a cold one
/// tens of milliseconds, a Create's bucket check or a Mount against a slow store seconds, up to
/// `--mount-timeout` (at most 600 s).
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS.iter().copied())
}

/// The process-wide counters and histograms.
struct Static {
    calls: Family<CallLabels, Histogram, fn() -> Histogram>,
    mount_failures: Family<CauseLabels, Counter>,
    repairs: Counter,
    adoptions: Counter,
}

/// The `cause` label values of `bai_s3_mount_failures_total` (see [`failure_cause`]).
pub(super) const CAUSES: &[&str] = &[
    "backend", "s3fs", "timeout", "prefix", "system", "limit", "state", "other",
];

static STATIC: LazyLock<Static> = LazyLock::new(|| {
    let mount_failures = Family::<CauseLabels, Counter>::default();
    // Every cause is shown from the start (as 0), so rate() and alerts see it before the
    // first failure.
    for cause in CAUSES {
        let _ = mount_failures.get_or_create(&CauseLabels { cause });
    }
    Static {
        calls: Family::new_with_constructor(call_histogram),
        mount_failures,
        repairs: Counter::default(),
        adoptions: Counter::default(),
    }
});

/// The `endpoint` label of a request path: the protocol's endpoint name, or `other`.
pub fn endpoint_label(path: &str) -> &'static str {
    let name = path.strip_prefix('/').unwrap_or(path);
    ENDPOINTS
        .iter()
        .find(|e| **e == name)
        .copied()
        .unwrap_or("other")
}

/// Count one plugin call (the server calls this once per request, next to its log line).
pub fn record_call(path: &str, ok: bool, elapsed: Duration) {
    let labels = CallLabels {
        endpoint: endpoint_label(path),
        outcome: if ok { "ok" } else { "error" },
    };
    STATIC
        .calls
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
}

/// The `cause` label of a failed mount. The mounter's errors are sentences for the user; the
/// few shapes they come in are told apart here (pinned by the unit tests).
pub fn failure_cause(e: &Error) -> &'static str {
    match e {
        Error::UnknownBackend { .. } => "backend",
        Error::Persist { .. } => "state",
        Error::Mount { source, .. } => match source.cause() {
            Cause::S3fs => "s3fs",
            Cause::Timeout => "timeout",
            Cause::Prefix => "prefix",
            Cause::System => "system",
            Cause::Limit => "limit",
        },
        _ => "other",
    }
}

/// Count a mount attempt that failed (first mounts, repairs and restores alike).
pub fn mount_failed(e: &Error) {
    STATIC
        .mount_failures
        .get_or_create(&CauseLabels {
            cause: failure_cause(e),
        })
        .inc();
}

/// Count a dead mount (its s3fs gone) that is taken down to be mounted again.
pub fn repaired() {
    STATIC.repairs.inc();
}

/// Count a live mount taken over at start-up from an earlier run of the daemon.
pub fn adopted() {
    STATIC.adoptions.inc();
}

/// Register the counters and histograms with the help texts a scrape shows.
pub(super) fn register(r: &mut Registry) {
    r.register(
        "bai_s3_call_duration_seconds",
        "Plugin calls by endpoint and outcome (ok, or error: an Err reply or a refused request), with their duration; _count is the number of calls",
        STATIC.calls.clone(),
    );
    r.register(
        "bai_s3_mount_failures",
        // From the same list as the labels, so the two never disagree.
        format!(
            "Mount attempts that failed, by cause: {}",
            CAUSES.join(", ")
        ),
        STATIC.mount_failures.clone(),
    );
    for (name, help, counter) in [
        (
            "bai_s3_repairs",
            "Dead mounts (s3fs gone) found and mounted again, by a Mount or the health check",
            &STATIC.repairs,
        ),
        (
            "bai_s3_adoptions",
            "Live mounts taken over at start-up from an earlier run, without a new s3fs",
            &STATIC.adoptions,
        ),
    ] {
        r.register(name, help, counter.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mounter::MountError;

    fn mount_err(source: MountError) -> Error {
        Error::Mount {
            name: "v".into(),
            source,
        }
    }

    #[test]
    fn endpoints_map_to_a_closed_set() {
        assert_eq!(endpoint_label("/VolumeDriver.Mount"), "VolumeDriver.Mount");
        assert_eq!(endpoint_label("/Plugin.Activate"), "Plugin.Activate");
        assert_eq!(endpoint_label("/VolumeDriver.Mount/x"), "other");
        assert_eq!(endpoint_label("/secret-key=abc"), "other");
        assert_eq!(endpoint_label(""), "other");
    }

    #[test]
    fn failure_causes_follow_the_mounters_kinds() {
        let after = std::time::Duration::from_secs(20);
        let said = || "x".to_string();
        let link = crate::fsutil::BeneathError {
            component: "evil".into(),
            kind: crate::fsutil::Beneath::Symlink,
        };
        let cases = [
            (MountError::Exited { said: said() }, "s3fs"),
            (MountError::NotRunning, "s3fs"),
            (
                MountError::Spawn {
                    program: "s3fs".into(),
                    error: "No such file".into(),
                },
                "s3fs",
            ),
            (
                MountError::NeverReady {
                    after,
                    said: said(),
                },
                "timeout",
            ),
            (MountError::Deadline { after }, "timeout"),
            (
                MountError::SharedUnanswered {
                    bucket: "b".into(),
                    after,
                },
                "timeout",
            ),
            (MountError::GivenUp, "timeout"),
            (
                MountError::Prefix(crate::mounter::resolve::PrefixError {
                    bucket: "b".into(),
                    prefix: "evil".into(),
                    read_only: false,
                    error: link,
                }),
                "prefix",
            ),
            (
                MountError::host("cannot open s3fs log /s/l", "denied"),
                "system",
            ),
            (
                MountError::Table(crate::mounter::sys::TableError::Unmount {
                    path: "/b".into(),
                    errno: nix::errno::Errno::EBUSY,
                }),
                "system",
            ),
            (
                MountError::StillMounted {
                    target: "/b".into(),
                },
                "system",
            ),
            (
                MountError::Limit {
                    bucket: "b".into(),
                    mounted: 2,
                    max: 2,
                },
                "limit",
            ),
        ];
        for (e, cause) in cases {
            let shown = e.to_string();
            assert_eq!(failure_cause(&mount_err(e)), cause, "{shown}");
            assert!(CAUSES.contains(&cause));
        }
        let unknown = Error::UnknownBackend {
            name: "x".into(),
            path: "/etc/bai-s3/backends.toml".into(),
            known: vec![],
            problem: None,
        };
        assert_eq!(failure_cause(&unknown), "backend");
        let persist = Error::Persist {
            path: "/s".into(),
            source: Arc::new(std::io::Error::other("read-only")),
        };
        assert_eq!(failure_cause(&persist), "state");
        assert_eq!(failure_cause(&Error::ShuttingDown), "other");
    }
}
