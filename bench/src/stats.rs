//! Latency summaries: percentiles over every recorded request.

use std::time::Duration;

/// A summary of request latencies over a phase.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Number of requests.
    pub count: usize,
    /// Requests per second over the phase's wall-clock time.
    pub per_second: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
}

impl Summary {
    /// Summarises `latencies` of requests that together took `wall` time.
    pub fn new(mut latencies: Vec<Duration>, wall: Duration) -> Summary {
        latencies.sort_unstable();
        Summary {
            count: latencies.len(),
            per_second: latencies.len() as f64 / wall.as_secs_f64().max(f64::EPSILON),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

/// The `q` quantile (nearest rank) of sorted `values`; zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
