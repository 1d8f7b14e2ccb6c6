//! Latency samples per endpoint, and their summary (count, throughput, percentiles).

use std::collections::BTreeMap;
use std::time::Duration;

/// The latencies and failures seen on each endpoint by one or more load tasks.
#[derive(Debug, Default)]
pub struct Recorder {
    series: BTreeMap<&'static str, Series>,
}

#[derive(Debug, Default)]
struct Series {
    micros: Vec<u32>,
    errors: u64,
}

impl Recorder {
    pub fn record(&mut self, endpoint: &'static str, took: Duration, ok: bool) {
        let series = self.series.entry(endpoint).or_default();
        if ok {
            series
                .micros
                .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            series.errors += 1;
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        for (endpoint, series) in other.series {
            let mine = self.series.entry(endpoint).or_default();
            mine.micros.extend(series.micros);
            mine.errors += series.errors;
        }
    }

    /// The summary of each endpoint over a run of `elapsed`.
    pub fn summarise(mut self, elapsed: Duration) -> Vec<EndpointSummary> {
        self.series
            .iter_mut()
            .map(|(endpoint, series)| {
                series.micros.sort_unstable();
                let ms = |q: f64| percentile(&series.micros, q) as f64 / 1000.0;
                EndpointSummary {
                    endpoint,
                    ok: series.micros.len() as u64,
                    errors: series.errors,
                    per_sec: series.micros.len() as f64 / elapsed.as_secs_f64(),
                    p50_ms: ms(0.50),
                    p99_ms: ms(0.99),
                    p999_ms: ms(0.999),
                }
            })
            .collect()
    }
}

/// The value below which a fraction `q` of the sorted `values` lie (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One endpoint's figures over a run.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSummary {
    pub endpoint: &'static str,
    /// Answers with the expected status.
    pub ok: u64,
    /// Other answers and transport failures.
    pub errors: u64,
    /// Successful answers per second.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), 500);
        assert_eq!(percentile(&values, 0.99), 990);
        assert_eq!(percentile(&values, 0.999), 999);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn summaries_count_per_endpoint() {
        let mut a = Recorder::default();
        a.record("pop", Duration::from_millis(2), true);
        a.record("pop", Duration::from_millis(4), false);
        let mut b = Recorder::default();
        b.record("pop", Duration::from_millis(6), true);
        b.record("check", Duration::from_millis(1), true);
        a.merge(b);
        let summary = a.summarise(Duration::from_secs(2));
        assert_eq!(summary[0].endpoint, "check");
        let pop = &summary[1];
        assert_eq!((pop.ok, pop.errors), (2, 1));
        assert_eq!(pop.per_sec, 1.0);
        assert_eq!(pop.p50_ms, 2.0);
        assert_eq!(pop.p999_ms, 6.0);
    }
}
