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

/// A `cause` label value of `bai_s3_mount_failures_total` and what it tells an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCause {
    /// The label value.
    pub label: &'static str,
    /// Its meaning, as the cause table in docs/operations.md shows it.
    pub meaning: &'static str,
}

/// The one list of failure causes: the labels shown from the start, the metric's help text
/// and the cause table of docs/operations.md (a unit test holds the doc to it) all come from
/// here, so they cannot drift apart. [`failure_cause`] answers only these labels (pinned by
/// its test).
pub const CAUSES: &[FailureCause] = &[
    FailureCause {
        label: "backend",
        meaning: "the volume's backend is not in the backends file",
    },
    FailureCause {
        label: "s3fs",
        meaning: "s3fs failed to start or exited, e.g. a wrong bucket or keys: its words are in `last-error`",
    },
    FailureCause {
        label: "timeout",
        meaning: "not ready within `--mount-timeout`, or given up at that deadline",
    },
    FailureCause {
        label: "prefix",
        meaning: "the volume's `prefix` is not a folder in the bucket: a link, a file, or missing for an `ro=true` volume",
    },
    FailureCause {
        label: "system",
        meaning: "a local step failed: folders, bind mounts, the mount table",
    },
    FailureCause {
        label: "limit",
        meaning: "refused by `--max-mounts`",
    },
    FailureCause {
        label: "state",
        meaning: "the state file could not be written",
    },
    FailureCause {
        label: "other",
        meaning: "anything else, e.g. the daemon was shutting down",
    },
];

static STATIC: LazyLock<Static> = LazyLock::new(|| {
    let mount_failures = Family::<CauseLabels, Counter>::default();
    // Every cause is shown from the start (as 0), so rate() and alerts see it before the
    // first failure.
    for c in CAUSES {
        let _ = mount_failures.get_or_create(&CauseLabels { cause: c.label });
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
        // A shared outcome has the cause of the error it shares.
        Error::Shared(inner) => failure_cause(inner),
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
            CAUSES
                .iter()
                .map(|c| c.label)
                .collect::<Vec<_>>()
                .join(", ")
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
        let mut seen = std::collections::BTreeSet::new();
        let cases = [
            (MountError::Exited { said: said() }, "s3fs"),
            (
                MountError::Spawn {
                    program: "s3fs".into(),
                    error: std::io::Error::other("No such file"),
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
            assert!(CAUSES.iter().any(|c| c.label == cause));
            seen.insert(cause);
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
            source: std::io::Error::other("read-only"),
        };
        assert_eq!(failure_cause(&persist), "state");
        let shared = Error::Shared(std::sync::Arc::new(persist));
        assert_eq!(failure_cause(&shared), "state");
        assert_eq!(failure_cause(&Error::ShuttingDown), "other");
        // Every cause in the list can happen: no label is listed that nothing answers.
        seen.extend(["backend", "state", "other"]);
        let listed: std::collections::BTreeSet<_> = CAUSES.iter().map(|c| c.label).collect();
        assert_eq!(seen, listed);
    }

    /// The cause table under "Mount failure causes" in docs/operations.md: its rows as
    /// (label, meaning).
    fn documented_causes(doc: &str) -> Vec<(String, String)> {
        doc.lines()
            .skip_while(|l| l.trim() != "### Mount failure causes")
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2) // the header and its rule
            .map(|row| {
                let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
                let label = cells[0].trim_matches('`').to_string();
                (label, cells[1..].join("|"))
            })
            .collect()
    }

    #[test]
    fn the_docs_list_exactly_these_causes() {
        let doc = include_str!("../../docs/operations.md");
        let documented = documented_causes(doc);
        let listed: Vec<(String, String)> = CAUSES
            .iter()
            .map(|c| (c.label.to_string(), c.meaning.to_string()))
            .collect();
        assert_eq!(
            documented, listed,
            "docs/operations.md's cause table must show CAUSES, in order and in the same words"
        );
    }
}
