//! Prometheus metrics for operators (`--metrics-addr`, off by default): `GET /metrics` on a TCP
//! listener, in the Prometheus text format.
//!
//! Counters and histograms are process-wide statics that the server and the driver bump with
//! one call each ([`record_call`], [`mount_failed`], [`repaired`], [`adopted`]), so a call site
//! needs no handle passed down. Gauges (volumes, holders, mounts by health, s3fs processes and
//! their memory) are computed at scrape time from the driver's read-only view and `/proc`: a
//! scrape never takes a volume's lock, never waits for the object store and keeps no copy
//! that could drift.
//!
//! Labels come from closed sets only (endpoint names, `ok`/`error`, failure causes, health
//! words): never a volume name, an option, a request path as sent or anything from the
//! backends file, so a hostile client cannot grow the series and no secret can reach a label.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::driver::VolumeInfo;
use crate::error::Error;
use crate::mounter::{sys, Cause, Health};

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

/// Scrapes served at once; Prometheus needs one.
const MAX_CONNECTIONS: usize = 16;
/// A scraper must send its request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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
const CAUSES: &[&str] = &[
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

/// Parse `--metrics-addr`: `ADDR:PORT`, or empty for off (the managed plugin's manifest
/// lists the setting with an empty value, which Docker passes as an empty variable).
pub fn parse_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!(
            "{s:?} is not an address and port; use e.g. 127.0.0.1:9108 or [::1]:9108 (empty: off)"
        )
    })
}

/// Where the scrape-time gauges come from.
pub struct Sources {
    /// The driver's volumes as Get and List show them (from memory, no lock held long).
    pub volumes: Box<dyn Fn() -> Vec<VolumeInfo> + Send + Sync>,
    /// `<mount-root>/.s3fs`: an s3fs whose mount point lies here belongs to this daemon.
    pub shared_root: PathBuf,
    /// The s3fs program's file name, as it appears in `/proc/PID/cmdline`.
    pub s3fs_program: String,
    /// `--max-mounts` (0: no limit), shown next to the count of s3fs processes it limits.
    pub max_mounts: usize,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("shared_root", &self.shared_root)
            .field("s3fs_program", &self.s3fs_program)
            .field("max_mounts", &self.max_mounts)
            .finish_non_exhaustive()
    }
}

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/PID/status`); None when it is gone.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Gauges at scrape time.
#[derive(Debug)]
struct Live(Sources);

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let volumes = (self.0.volumes)();
        let holders: u64 = volumes.iter().map(|v| v.status.holders).sum();
        let with_health =
            |h: Health| volumes.iter().filter(|v| v.status.health == h).count() as u64;
        let shared_root = self.0.shared_root.as_path();
        let s3fs = sys::processes_with_arg(&self.0.s3fs_program, |a: &Path| {
            (a.parent() == Some(shared_root)).then_some(())
        });
        let rss: u64 = s3fs
            .iter()
            .filter_map(|(pid, ())| resident_bytes(*pid))
            .sum();

        gauge(
            &mut encoder,
            "bai_s3_volumes",
            "Volumes registered (created and not removed).",
            as_gauge(volumes.len() as u64),
        )?;
        gauge(
            &mut encoder,
            "bai_s3_holders",
            "Mounts minus Unmounts over all volumes and caller IDs.",
            as_gauge(holders),
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "bai_s3_mounts",
                "Mounted volumes by health: ok; slow (its s3fs did not answer the last probe in time; left alone); stale (its s3fs is gone; the next Mount or health check mounts it again).",
                None,
                g.metric_type(),
            )?;
            for h in [Health::Ok, Health::Slow, Health::Stale] {
                let word = h.as_str();
                ConstGauge::new(as_gauge(with_health(h)))
                    .encode(family.encode_family(&[("health", word)])?)?;
            }
        }
        gauge(
            &mut encoder,
            "bai_s3_s3fs_processes",
            "Live s3fs processes serving this daemon's mounts (one per bucket and settings).",
            as_gauge(s3fs.len() as u64),
        )?;
        gauge(
            &mut encoder,
            "bai_s3_max_mounts",
            "The most s3fs processes this daemon starts (--max-mounts); 0: no limit.",
            as_gauge(self.0.max_mounts as u64),
        )?;
        gauge(
            &mut encoder,
            "bai_s3_s3fs_resident_memory_bytes",
            "Resident memory of those s3fs processes together, in bytes.",
            as_gauge(rss),
        )?;
        let g = ConstGauge::new(1i64);
        g.encode(
            encoder
                .encode_descriptor(
                    "bai_s3_build_info",
                    "The running bai-s3's version (always 1).",
                    None,
                    g.metric_type(),
                )?
                .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?,
        )
    }
}

/// The registry a scrape encodes: the process-wide statics and the scrape-time gauges.
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::default();
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
    r.register_collector(Box::new(Live(sources)));
    r
}

/// Bind the metrics listener (before the daemon starts serving, so a taken port is an error
/// at start-up, not a silent absence).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

async fn answer(registry: Arc<Registry>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: bai-s3 serves its metrics at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} /metrics: use GET\n", req.method()),
        );
        r.headers_mut().insert(
            "Allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    // Reading /proc for the s3fs gauges is blocking file I/O: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => respond(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        ),
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n".into(),
        ),
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped. Few connections at once, no
/// keep-alive and a read deadline, so an idle or slow client cannot hold the endpoint.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .keep_alive(false);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let reg = Arc::clone(&registry);
        let svc = hyper::service::service_fn(move |req| {
            let reg = Arc::clone(&reg);
            async move { Ok::<_, Infallible>(answer(reg, req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
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
        let cases = [
            (MountError::Exited { said: said() }, "s3fs"),
            (
                MountError::Spawn {
                    program: "s3fs".into(),
                    error: std::io::Error::other("No such file").into(),
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

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\ts3fs\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthread\n"), None);
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn addresses_parse_and_empty_is_off() {
        assert_eq!(parse_addr("").unwrap(), None);
        assert_eq!(parse_addr("  ").unwrap(), None);
        assert_eq!(
            parse_addr("127.0.0.1:9108").unwrap(),
            Some("127.0.0.1:9108".parse().unwrap())
        );
        assert!(parse_addr("[::1]:9108").unwrap().is_some());
        let e = parse_addr("localhost").unwrap_err();
        assert!(
            e.contains("\"localhost\"") && e.contains("127.0.0.1:9108"),
            "{e}"
        );
    }

    #[test]
    fn a_scrape_is_valid_text_with_every_family() {
        let r = registry(Sources {
            volumes: Box::new(Vec::new),
            shared_root: PathBuf::from("/nonexistent/.s3fs"),
            s3fs_program: "s3fs".into(),
            max_mounts: 7,
        });
        record_call("/VolumeDriver.Get", false, Duration::from_millis(3));
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &r).unwrap();
        for line in [
            "# TYPE bai_s3_call_duration_seconds histogram",
            "bai_s3_call_duration_seconds_count{endpoint=\"VolumeDriver.Get\",outcome=\"error\"}",
            "# TYPE bai_s3_mount_failures_total counter",
            "bai_s3_repairs_total ",
            "bai_s3_adoptions_total ",
            "bai_s3_volumes 0",
            "bai_s3_holders 0",
            "bai_s3_mounts{health=\"ok\"} 0",
            "bai_s3_mounts{health=\"slow\"} 0",
            "bai_s3_mounts{health=\"stale\"} 0",
            "bai_s3_s3fs_processes 0",
            "bai_s3_s3fs_resident_memory_bytes 0",
            "bai_s3_max_mounts 7",
            "bai_s3_mount_failures_total{cause=\"limit\"} 0",
            "by cause: backend, s3fs, timeout, prefix, system, limit, state, other",
            "bai_s3_build_info{version=",
        ] {
            assert!(body.contains(line), "{line:?} missing in:\n{body}");
        }
    }
}
