//! Choosing the next token: seeded temperature sampling or greedy decoding, and the top
//! next-token log-probabilities a judgment reports.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;

/// Picks each next token: greedily at temperature 0, else from the softmax of the logits
/// divided by the temperature, with a generator seeded per call.
pub(super) struct Sampler {
    temperature: f64,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `temperature` seeded with `seed`.
    pub(super) fn new(temperature: f64, seed: u64) -> Self {
        Self {
            temperature,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next token under `logits`.
    pub(super) fn next(&mut self, logits: &[f32]) -> u32 {
        let greedy = || {
            (0u32..)
                .zip(logits)
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(id, _)| id)
        };
        if self.temperature <= 0.0 {
            return greedy();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let weights = logits
            .iter()
            .map(|&l| ((l as f64 - max) / self.temperature).exp());
        match WeightedIndex::new(weights) {
            Ok(distribution) => distribution.sample(&mut self.rng) as u32,
            Err(_) => greedy(),
        }
    }
}

/// The `k` most likely tokens under `logits` with their natural-log probabilities (the
/// log-softmax of the raw logits), most likely first.
pub(super) fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(ids.len());
    if k < ids.len() && k > 0 {
        ids.select_nth_unstable_by(k - 1, by_logit);
    }
    ids.truncate(k);
    ids.sort_unstable_by(by_logit);
    ids.into_iter()
        .map(|id| (id, logits[id as usize] as f64 - log_sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_best_and_sampling_repeats_for_a_seed() {
        let logits = [0.5f32, 2.0, 2.0, 1.0];
        assert_eq!(Sampler::new(0.0, 7).next(&logits), 1);
        let draw = |seed| {
            let mut sampler = Sampler::new(1.0, seed);
            (0..32).map(|_| sampler.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert!(draw(3).iter().all(|&id| id < 4));
    }

    #[test]
    fn top_logprobs_are_sorted_log_softmax_values() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let top = top_logprobs(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((top[0].1 - (3.0f64.exp() / total).ln()).abs() < 1e-9);
        assert!((top[2].1 - (2.0f64.exp() / total).ln()).abs() < 1e-9);
        assert_eq!(top_logprobs(&logits, 10).len(), 5);
    }
}
