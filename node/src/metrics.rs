//! `GET /metrics`: what an operator graphs, in Prometheus' text format.
//!
//! HTTP requests are counted by route template and status with a latency
//! histogram as they finish ([`HttpMetrics::observe`], from the middleware
//! in `http.rs`); everything else is read when scraped (`http/metrics.rs`):
//! gateway sessions, federation counters and the outbox's backlog, the
//! database pool, voice. This module is the counting and the format.
//! Off unless the operator sets a token (`--metrics-token`); the scraper
//! sends it as a bearer token.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};


/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Most (route, status) series kept; later ones count under `other`.
const MAX_SERIES: usize = 2_000;

/// Request counts and latencies by route template and status.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    series: Arc<Mutex<HashMap<(Arc<str>, u16), Series>>>,
}

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    /// Requests at or below each bound of [`BUCKETS`] (not cumulative).
    buckets: [u64; BUCKETS.len()],
}

impl HttpMetrics {
    /// Counts one finished request of `route` (`METHOD /template`).
    pub fn observe(&self, route: Arc<str>, status: u16, seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if series.len() < MAX_SERIES || series.contains_key(&(route.clone(), status)) {
            (route, status)
        } else {
            (Arc::from("other"), status)
        };
        let entry = series.entry(key).or_default();
        entry.count += 1;
        entry.sum += seconds;
        if let Some(i) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            entry.buckets[i] += 1;
        }
    }

    /// Appends the request series in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let mut series: Vec<((Arc<str>, u16), Series)> = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        header(out, "together_http_requests_total", "counter", "HTTP requests answered, by route and status.");
        for ((route, status), s) in &series {
            let _ = writeln!(out, "together_http_requests_total{{route=\"{}\",status=\"{status}\"}} {}", escape(route), s.count);
        }
        header(out, "together_http_request_duration_seconds", "histogram", "Time to answer HTTP requests.");
        for ((route, status), s) in &series {
            let labels = format!("route=\"{}\",status=\"{status}\"", escape(route));
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(out, "together_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "together_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "together_http_request_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "together_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_series_bounded() {
        let metrics = HttpMetrics::default();
        metrics.observe("GET /a".into(), 200, 0.003);
        metrics.observe("GET /a".into(), 200, 0.2);
        for i in 0..MAX_SERIES + 10 {
            metrics.observe(format!("GET /{i}").into(), 200, 0.001);
        }
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("together_http_request_duration_seconds_bucket{route=\"GET /a\",status=\"200\",le=\"0.005\"} 1"));
        assert!(out.contains("together_http_request_duration_seconds_bucket{route=\"GET /a\",status=\"200\",le=\"0.25\"} 2"));
        assert!(out.contains("together_http_request_duration_seconds_count{route=\"GET /a\",status=\"200\"} 2"));
        assert!(out.contains("together_http_requests_total{route=\"other\",status=\"200\"}"));
        assert!(metrics.series.lock().unwrap_or_else(PoisonError::into_inner).len() <= MAX_SERIES + 1);
    }
}
