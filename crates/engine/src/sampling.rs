//! Choosing the next token from logits: greedy, or temperature and nucleus sampling with a seeded
//! generator (for backends that do not sample themselves).

use crate::generate::SamplingParams;

/// A per-sequence sampler.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    state: u64,
}

impl Sampler {
    /// A sampler for sequence `index` of a batch (seeded `seed + index`).
    pub fn new(params: &SamplingParams, index: usize) -> Self {
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            state: params
                .seed
                .wrapping_add(index as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1,
        }
    }

    /// splitmix64: small, fast, and the same on every platform.
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probabilities: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (((l - max) / self.temperature) as f64).exp()))
            .collect();
        let total: f64 = probabilities.iter().map(|(_, p)| p).sum();
        probabilities.sort_by(|a, b| b.1.total_cmp(&a.1));
        // The smallest set of most likely tokens whose mass reaches top_p.
        let threshold = self.top_p.clamp(0.0, 1.0) as f64 * total;
        let mut kept = 0.0;
        let mut cut = probabilities.len();
        for (i, (_, p)) in probabilities.iter().enumerate() {
            kept += p;
            if kept >= threshold {
                cut = i + 1;
                break;
            }
        }
        probabilities.truncate(cut.max(1));
        let mass: f64 = probabilities.iter().map(|(_, p)| p).sum();
        let mut target = self.next_unit() * mass;
        for (token, p) in &probabilities {
            target -= p;
            if target <= 0.0 {
                return *token;
            }
        }
        probabilities.last().map_or(0, |(t, _)| *t)
    }
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log softmax(logits)[token].
pub fn log_probability(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let logit = logits
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    ((logit - max) as f64 - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut sampler = Sampler::new(&SamplingParams::default(), 0);
        assert_eq!(sampler.sample(&[0.1, 3.0, 2.9]), 1);
    }

    #[test]
    fn a_tiny_top_p_is_greedy_and_seeds_reproduce() {
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            ..SamplingParams::default()
        };
        assert_eq!(Sampler::new(&params, 0).sample(&[0.0, 5.0, 1.0]), 1);
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 3,
            ..SamplingParams::default()
        };
        let draws = |p: &SamplingParams| {
            let mut s = Sampler::new(p, 0);
            (0..20)
                .map(|_| s.sample(&[1.0, 1.0, 1.0, 1.0]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(&params), draws(&params));
        assert!(draws(&params).iter().any(|&t| t != draws(&params)[0]));
    }

    #[test]
    fn log_probabilities_normalize() {
        let logits = [1.0, 2.0, 3.0];
        let total: f32 = (0..3).map(|t| log_probability(&logits, t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
