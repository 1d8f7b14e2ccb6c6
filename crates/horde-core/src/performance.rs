//! Recent speeds of finished jobs by model: what `/status/models` reports as a model's
//! performance and what the wait estimates assume for a worker not yet measured.

use std::collections::{HashMap, VecDeque};

/// Recent speeds (pixelsteps per second) of finished jobs, by model.
#[derive(Debug, Default)]
pub struct ModelPerformance {
    samples: HashMap<String, VecDeque<(i64, f64)>>,
}

impl ModelPerformance {
    const WINDOW_SECS: i64 = 3600;
    const MAX_SAMPLES: usize = 200;

    pub fn record(&mut self, model: &str, now: i64, pixelsteps_per_sec: f64) {
        let samples = self.samples.entry(model.to_string()).or_default();
        samples.push_back((now, pixelsteps_per_sec));
        while samples.len() > Self::MAX_SAMPLES
            || samples
                .front()
                .is_some_and(|s| s.0 < now - Self::WINDOW_SECS)
        {
            samples.pop_front();
        }
    }

    /// Average pixelsteps per second over the last hour, 0 without samples.
    pub fn average(&self, model: &str, now: i64) -> f64 {
        let Some(samples) = self.samples.get(model) else {
            return 0.0;
        };
        let recent: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 >= now - Self::WINDOW_SECS)
            .map(|s| s.1)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// Every model's [`ModelPerformance::average`] at `now`.
    pub fn averages(&self, now: i64) -> HashMap<String, f64> {
        self.samples
            .keys()
            .map(|model| (model.clone(), self.average(model, now)))
            .collect()
    }

    /// Pixelsteps finished in the last `secs` seconds.
    pub fn all_models_average(&self, now: i64) -> f64 {
        let models: Vec<&String> = self.samples.keys().collect();
        let speeds: Vec<f64> = models
            .iter()
            .map(|m| self.average(m, now))
            .filter(|s| *s > 0.0)
            .collect();
        if speeds.is_empty() {
            0.0
        } else {
            speeds.iter().sum::<f64>() / speeds.len() as f64
        }
    }
}
