//! Choosing the next token from one row of logits: repetition penalty, no-repeat n-gram
//! ban, temperature, top-k, top-p, min-p, then greedy argmax or a seeded draw.
//!
//! The processors follow Hugging Face transformers' logits processors (same order, same
//! tie rules), so a configuration means the same thing here as in `model.generate`. The
//! random draws come from a generator written in this file (xoshiro256**, seeded through
//! SplitMix64), so a seed gives the same tokens on every machine and every version of
//! every dependency.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// How tokens are chosen and when generation stops. Every field has a neutral value that
/// switches its processor off; the default is greedy decoding of up to 256 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Divides the logits before sampling. `0` means greedy (argmax; top-k, top-p and
    /// min-p are then irrelevant because they always keep the most likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties at the boundary are all kept, as in
    /// transformers). `0` = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to
    /// `top_p` (always at least one). `1.0` = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely token's.
    /// `0.0` = off.
    pub min_p: f32,
    /// Tokens already in the sequence (prompt included) have positive logits divided by
    /// this and negative logits multiplied by it (transformers' CTRL-style penalty).
    /// `1.0` = off.
    pub repetition_penalty: f32,
    /// Never produce an n-gram of this size that already occurs in the sequence (prompt
    /// included). `0` = off.
    pub no_repeat_ngram_size: usize,
    /// Generation stops after this many new tokens.
    pub max_new_tokens: usize,
    /// Generation stops when the decoded continuation contains one of these; the stop
    /// string and anything after it is trimmed from the returned text.
    pub stop_strings: Vec<String>,
    /// Generation stops after one of these tokens (kept in the returned tokens, like an
    /// end-of-sequence token).
    pub stop_token_ids: Vec<u32>,
    /// Seed of the random draws; batch row `r` uses its own stream derived from
    /// `(seed, r)`.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> SamplingConfig {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            max_new_tokens: 256,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding (the default), up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> SamplingConfig {
        SamplingConfig { max_new_tokens, ..SamplingConfig::default() }
    }

    /// Whether tokens are drawn at random (temperature above zero).
    pub fn is_sampling(&self) -> bool {
        self.temperature > 0.0
    }

    /// Rejects values that have no meaning (negative temperature, top-p outside (0, 1]...).
    pub fn validate(&self) -> Result<()> {
        let problem = if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            Some(format!("temperature must be a finite number >= 0, got {}", self.temperature))
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            Some(format!("top_p must be in (0, 1], got {}", self.top_p))
        } else if !(0.0..=1.0).contains(&self.min_p) {
            Some(format!("min_p must be in [0, 1], got {}", self.min_p))
        } else if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            Some(format!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty))
        } else if self.stop_strings.iter().any(String::is_empty) {
            Some("stop_strings must not contain an empty string".to_string())
        } else {
            None
        };
        match problem {
            Some(message) => Err(ModelError::Config(format!("sampling: {message}"))),
            None => Ok(()),
        }
    }
}

/// Chooses tokens for one sequence (one batch row): holds the configuration and the
/// row's random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: Xoshiro256StarStar,
}

impl Sampler {
    /// A sampler for batch row `row`; its random stream depends on `(config.seed, row)`
    /// only, so a row's tokens do not depend on the other rows of the batch.
    pub fn new(config: &SamplingConfig, row: usize) -> Result<Sampler> {
        config.validate()?;
        Ok(Sampler { config: config.clone(), rng: Xoshiro256StarStar::for_row(config.seed, row as u64) })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// The next token after `history` (every token of the sequence so far, prompt
    /// included, padding excluded) given the logits of the last position.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Config("sampling: empty row of logits".to_string()));
        }
        let mut scores = logits.to_vec();
        apply_repetition_penalty(&mut scores, history, self.config.repetition_penalty);
        ban_repeated_ngrams(&mut scores, history, self.config.no_repeat_ngram_size);
        if !self.config.is_sampling() {
            return argmax(&scores).ok_or_else(no_candidate);
        }
        apply_temperature(&mut scores, self.config.temperature);
        if self.config.top_k > 0 {
            keep_top_k(&mut scores, self.config.top_k);
        }
        if self.config.top_p < 1.0 {
            keep_top_p(&mut scores, self.config.top_p);
        }
        if self.config.min_p > 0.0 {
            keep_min_p(&mut scores, self.config.min_p);
        }
        let probabilities = softmax(&scores).ok_or_else(no_candidate)?;
        Ok(draw(&probabilities, self.rng.next_f64()))
    }

    /// [`Sampler::sample`] for a 1-D tensor of logits (any float dtype).
    pub fn sample_tensor(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let logits = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.sample(&logits, history)
    }
}

fn no_candidate() -> ModelError {
    ModelError::Config(
        "sampling: every token was ruled out (all logits are -inf or NaN after the processors)".to_string(),
    )
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: for every distinct token of
/// `history`, a positive logit is divided by `penalty`, a negative one multiplied.
pub fn apply_repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &token in history {
        let token = token as usize;
        if token < scores.len() && !seen[token] {
            seen[token] = true;
            let score = scores[token];
            scores[token] = if score < 0.0 { score * penalty } else { score / penalty };
        }
    }
}

/// transformers' `NoRepeatNGramLogitsProcessor`: bans every token that would complete an
/// n-gram of size `ngram_size` already present in `history`.
pub fn ban_repeated_ngrams(scores: &mut [f32], history: &[u32], ngram_size: usize) {
    if ngram_size == 0 || history.len() + 1 < ngram_size {
        return;
    }
    let prefix_len = ngram_size - 1;
    let current_prefix = &history[history.len() - prefix_len..];
    for window in history.windows(ngram_size) {
        if &window[..prefix_len] == current_prefix {
            let banned = window[prefix_len] as usize;
            if let Some(score) = scores.get_mut(banned) {
                *score = f32::NEG_INFINITY;
            }
        }
    }
}

/// Divides every logit by `temperature` (> 0).
pub fn apply_temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        scores.iter_mut().for_each(|score| *score /= temperature);
    }
}

/// transformers' `TopKLogitsWarper`: every token whose logit is below the k-th largest
/// becomes -inf (tokens tied with the k-th are kept).
pub fn keep_top_k(scores: &mut [f32], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    let mut sorted: Vec<f32> =
        scores.iter().map(|&s| if s.is_nan() { f32::NEG_INFINITY } else { s }).collect();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    for score in scores.iter_mut() {
        // NaN counts as below every threshold.
        if score.is_nan() || *score < threshold {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// transformers' `TopPLogitsWarper`: sorts tokens by ascending probability and removes
/// those whose cumulative probability is at most `1 - top_p`; the most likely token is
/// always kept.
pub fn keep_top_p(scores: &mut [f32], top_p: f32) {
    let Some(probabilities) = softmax(scores) else { return };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Ascending by logit; equal logits in ascending token order, so the result is fixed.
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let limit = 1.0 - f64::from(top_p);
    let mut cumulative = 0.0f64;
    let last = order.len() - 1;
    let mut removed = Vec::new();
    for (rank, &token) in order.iter().enumerate() {
        cumulative += probabilities[token];
        if rank < last && cumulative <= limit {
            removed.push(token);
        }
    }
    for token in removed {
        scores[token] = f32::NEG_INFINITY;
    }
}

/// transformers' `MinPLogitsWarper`: removes tokens whose probability is below `min_p`
/// times the probability of the most likely token (the most likely is always kept).
pub fn keep_min_p(scores: &mut [f32], min_p: f32) {
    let Some(probabilities) = softmax(scores) else { return };
    let top = probabilities.iter().cloned().fold(0.0f64, f64::max);
    let threshold = f64::from(min_p) * top;
    for (score, probability) in scores.iter_mut().zip(probabilities) {
        if probability < threshold {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// The index of the largest logit (the first one on ties, like torch's argmax); `None`
/// when every logit is -inf or NaN.
pub fn argmax(scores: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (index, &score) in scores.iter().enumerate() {
        if score.is_nan() || score == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, best_score)| score > best_score) {
            best = Some((index, score));
        }
    }
    best.map(|(index, _)| index as u32)
}

/// Probabilities (f64, for stable sums) of a row of logits; NaN counts as -inf. `None`
/// when no token has a finite logit.
pub fn softmax(scores: &[f32]) -> Option<Vec<f64>> {
    let max = scores.iter().filter(|s| !s.is_nan()).cloned().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    if max == f32::INFINITY {
        // Infinite logits: share the mass between them.
        let weights: Vec<f64> = scores.iter().map(|&s| if s == f32::INFINITY { 1.0 } else { 0.0 }).collect();
        let total: f64 = weights.iter().sum();
        return Some(weights.into_iter().map(|w| w / total).collect());
    }
    let exps: Vec<f64> =
        scores.iter().map(|&s| if s.is_nan() { 0.0 } else { f64::from(s - max).exp() }).collect();
    let total: f64 = exps.iter().sum();
    Some(exps.into_iter().map(|e| e / total).collect())
}

/// Inverse-CDF draw: the first token (in token-id order) at which the cumulative
/// probability exceeds `uniform` (in [0, 1)). Rounding that leaves `uniform` above the
/// total picks the last token with non-zero probability.
pub fn draw(probabilities: &[f64], uniform: f64) -> u32 {
    let mut cumulative = 0.0;
    let mut last_possible = 0;
    for (token, &probability) in probabilities.iter().enumerate() {
        if probability > 0.0 {
            cumulative += probability;
            last_possible = token;
            if uniform < cumulative {
                return token as u32;
            }
        }
    }
    last_possible as u32
}

// SplitMix64 (seeding) and its output function `mix64` come from agora-core, the one
// copy the whole project draws seeds from.
pub use agora_core::{SplitMix64, mix64};

/// xoshiro256** 1.0 (Blackman and Vigna 2018): the generator behind every random draw.
/// Row `r` of a batch sampled with seed `s` starts from four SplitMix64 outputs seeded
/// with `s ^ mix64(r)`; row 0 thus uses the plain stream of seed `s`, the same stream a
/// single prompt gets. A uniform in [0, 1) is the top 53 bits times 2^-53.
#[derive(Debug, Clone)]
pub struct Xoshiro256StarStar {
    state: [u64; 4],
}

impl Xoshiro256StarStar {
    pub fn new(seed: u64) -> Xoshiro256StarStar {
        let mut seeder = SplitMix64::new(seed);
        let state = [seeder.next_u64(), seeder.next_u64(), seeder.next_u64(), seeder.next_u64()];
        Xoshiro256StarStar { state }
    }

    pub fn for_row(seed: u64, row: u64) -> Xoshiro256StarStar {
        Xoshiro256StarStar::new(seed ^ mix64(row))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
