//! Deterministic randomness: every random choice derives from (job seed, sample key, step),
//! so a rerun, a resumed run or another worker makes the same choice.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::sample::SampleKey;

/// A random generator for one decision of one sample.
pub fn rng_for(job_seed: u64, key: &SampleKey, step: &str) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(job_seed.to_le_bytes());
    hasher.update(key.0);
    hasher.update(step.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    ChaCha8Rng::from_seed(digest)
}

/// A 63-bit seed for one model call, passed to backends that accept a sampling seed.
pub fn call_seed(job_seed: u64, key: &SampleKey, step: &str) -> u64 {
    use rand::RngCore;
    rng_for(job_seed, key, step).next_u64() >> 1
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    #[test]
    fn same_inputs_same_draws_other_inputs_other_draws() {
        let key = SampleKey([7; 16]);
        let draw = |seed, step| -> Vec<u32> {
            let mut rng = rng_for(seed, &key, step);
            (0..8).map(|_| rng.random_range(0..16)).collect()
        };
        assert_eq!(draw(42, "round-1"), draw(42, "round-1"));
        assert_ne!(draw(42, "round-1"), draw(43, "round-1"));
        assert_ne!(draw(42, "round-1"), draw(42, "round-2"));
    }
}
