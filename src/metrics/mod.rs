//! Prometheus metrics for operators (`--metrics-addr`, off by default): `GET /metrics` on a TCP
//! listener, in the Prometheus text format.
//!
//! Three parts: [`counters`] are process-wide statics the server and the driver bump;
//! [`scrape`] computes the gauges at scrape time from a [`Sample`] the daemon takes (metrics
//! imports neither the driver nor the mounter's view, so neither import loops back);
//! [`serving`] is the TCP listener (on the accept loop it shares with the plugin socket,
//! [`crate::accept`]).
//!
//! Labels come from closed sets only (endpoint names, `ok`/`error`, failure causes, health
//! words): never a volume name, an option, a request path as sent or anything from the
//! backends file, so a hostile client cannot grow the series and no secret can reach a label.

use std::net::SocketAddr;

use prometheus_client::registry::Registry;

pub mod counters;
pub mod scrape;
pub mod serving;

pub use counters::{adopted, endpoint_label, failure_cause, mount_failed, record_call, repaired};
pub use scrape::{Mounts, Sample, Sources};
pub use serving::{bind, serve};

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

/// The registry a scrape encodes: the process-wide statics and the scrape-time gauges.
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::default();
    counters::register(&mut r);
    r.register_collector(Box::new(scrape::Live(sources)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
