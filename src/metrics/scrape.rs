//! The gauges computed at scrape time, from a [`Sample`] the daemon takes when asked: a scrape
//! never takes a volume's lock, never waits for the object store and keeps no copy that could
//! drift. Metrics owns the sample's type, so it reads nothing of the driver or the mounter
//! (which both call into metrics' counters).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// What the scrape-time gauges show, taken at once: the daemon builds it from the driver's
/// read-only view and the mounter's count of its s3fs processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Volumes registered (created and not removed).
    pub volumes: u64,
    /// Mounts minus Unmounts over all volumes and caller IDs.
    pub holders: u64,
    /// Mounted volumes by health.
    pub mounts: Mounts,
    /// Live s3fs processes serving this daemon's mounts.
    pub s3fs_processes: u64,
    /// Their resident memory together, in bytes.
    pub s3fs_resident_bytes: u64,
}

/// Mounted volumes by health, one field per `health` label value: the label set is closed by
/// this type, and a volume that is not mounted is in none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mounts {
    /// Mounted and answering.
    pub ok: u64,
    /// Its s3fs did not answer the last probe in time; left alone.
    pub slow: u64,
    /// Its s3fs is gone; the next Mount or health check mounts it again.
    pub stale: u64,
}

/// Where the scrape-time gauges come from.
pub struct Sources {
    /// Takes a sample; called once per scrape, off the async workers (it may read `/proc`).
    pub sample: Box<dyn Fn() -> Sample + Send + Sync>,
    /// `--max-mounts` (0: no limit), shown next to the count of s3fs processes it limits.
    pub max_mounts: usize,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("max_mounts", &self.max_mounts)
            .finish_non_exhaustive()
    }
}

/// Gauges at scrape time.
#[derive(Debug)]
pub(super) struct Live(pub(super) Sources);

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
        let s = (self.0.sample)();

        gauge(
            &mut encoder,
            "bai_s3_volumes",
            "Volumes registered (created and not removed).",
            as_gauge(s.volumes),
        )?;
        gauge(
            &mut encoder,
            "bai_s3_holders",
            "Mounts minus Unmounts over all volumes and caller IDs.",
            as_gauge(s.holders),
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "bai_s3_mounts",
                "Mounted volumes by health: ok; slow (its s3fs did not answer the last probe in time; left alone); stale (its s3fs is gone; the next Mount or health check mounts it again).",
                None,
                g.metric_type(),
            )?;
            let m = s.mounts;
            for (word, n) in [("ok", m.ok), ("slow", m.slow), ("stale", m.stale)] {
                ConstGauge::new(as_gauge(n)).encode(family.encode_family(&[("health", word)])?)?;
            }
        }
        gauge(
            &mut encoder,
            "bai_s3_s3fs_processes",
            "Live s3fs processes serving this daemon's mounts (one per bucket and settings).",
            as_gauge(s.s3fs_processes),
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
            as_gauge(s.s3fs_resident_bytes),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{record_call, registry};

    #[test]
    fn a_scrape_is_valid_text_with_every_family() {
        let r = registry(Sources {
            sample: Box::new(Sample::default),
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

    #[test]
    fn a_sample_is_shown_in_its_gauges() {
        let r = registry(Sources {
            sample: Box::new(|| Sample {
                volumes: 11,
                holders: 13,
                mounts: Mounts {
                    ok: 5,
                    slow: 3,
                    stale: 2,
                },
                s3fs_processes: 4,
                s3fs_resident_bytes: 123_456_789,
            }),
            max_mounts: 0,
        });
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &r).unwrap();
        for line in [
            "\nbai_s3_volumes 11\n",
            "\nbai_s3_holders 13\n",
            "\nbai_s3_mounts{health=\"ok\"} 5\n",
            "\nbai_s3_mounts{health=\"slow\"} 3\n",
            "\nbai_s3_mounts{health=\"stale\"} 2\n",
            "\nbai_s3_s3fs_processes 4\n",
            "\nbai_s3_s3fs_resident_memory_bytes 123456789\n",
            "\nbai_s3_max_mounts 0\n",
        ] {
            assert!(body.contains(line), "{line:?} missing in:\n{body}");
        }
    }
}
