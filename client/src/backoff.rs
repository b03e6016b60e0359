//! Exponential backoff with jitter, for reconnects and retries.

use std::time::Duration;

use crate::partitioner::Rng;

/// `base * 2^(attempt-1)`, capped at `max`, then scaled by a random factor in 0.8..1.2 so that
/// clients that failed together do not retry together.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32, rng: &mut Rng) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let jitter = 0.8 + f64::from(rng.below(400)) / 1000.0;
    d.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = Rng::with_seed(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let d1 = backoff(base, max, 1, &mut rng);
        assert!(d1 >= Duration::from_millis(80) && d1 <= Duration::from_millis(120));
        let d3 = backoff(base, max, 3, &mut rng);
        assert!(d3 >= Duration::from_millis(320) && d3 <= Duration::from_millis(480));
        for attempt in 5..40 {
            assert!(backoff(base, max, attempt, &mut rng) <= Duration::from_millis(1200));
        }
    }
}
