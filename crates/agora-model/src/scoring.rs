//! Log-probabilities of continuations given prompts, for batches of unequal lengths:
//! the primitive that perplexity, judges, SFT and DPO build on.
//!
//! Rows are `prompt ++ continuation`, right-padded, with a padding mask. Only the
//! positions whose next token belongs to a continuation are turned into
//! log-probabilities (a `[scored, vocab]` slice of the logits, never a full
//! `log_softmax` over every position), and everything stays differentiable.

use candle_core::{D, DType, Device, Tensor};

use crate::{LanguageModel, ModelError, Result};

/// Token id written into padding positions (hidden by the mask, so any id works).
const PADDING: u32 = 0;

/// A batch of `prompt ++ continuation` rows ready for a forward pass.
#[derive(Debug, Clone)]
pub struct ScoringBatch {
    /// `[batch, length]` u32, right-padded.
    pub tokens: Tensor,
    /// `[batch, length]` u32: 1 for real tokens, 0 for padding.
    pub mask: Tensor,
    /// Flat indices `row * length + position` of the positions whose *next* token is a
    /// continuation token, in row order: `[scored]` u32.
    scored_positions: Tensor,
    /// The continuation token predicted at each scored position: `[scored]` u32.
    targets: Tensor,
    /// The same targets, in memory (what the fused output layer reads).
    target_ids: Vec<u32>,
    /// `[batch, scored]` f32: 1 where scored position `j` belongs to row `i`, so a
    /// matmul sums a row's log-probabilities (the loss mask, in compact form).
    membership: Tensor,
    /// Number of target tokens of each row.
    lengths: Vec<usize>,
}

impl ScoringBatch {
    /// Rows `prompt ++ continuation`, every continuation token a target. Each prompt
    /// needs at least one token: the first continuation token is predicted from it.
    pub fn new(prompts: &[Vec<u32>], continuations: &[Vec<u32>], device: &Device) -> Result<Self> {
        if prompts.len() != continuations.len() {
            return Err(ModelError::Config(format!(
                "{} prompts but {} continuations",
                prompts.len(),
                continuations.len()
            )));
        }
        if let Some(row) = prompts.iter().position(Vec::is_empty) {
            return Err(ModelError::Config(format!(
                "prompt {row} is empty: the first continuation token needs a token before it \
                 (start with the tokenizer's BOS token)"
            )));
        }
        let mut rows = Vec::with_capacity(prompts.len());
        let mut targets = Vec::with_capacity(prompts.len());
        for (prompt, continuation) in prompts.iter().zip(continuations) {
            rows.push(prompt.iter().chain(continuation).copied().collect::<Vec<u32>>());
            let mut row_targets = vec![false; prompt.len()];
            row_targets.resize(prompt.len() + continuation.len(), true);
            targets.push(row_targets);
        }
        Self::from_targets(&rows, &targets, device)
    }

    /// Rows with an explicit loss mask: `targets[row][i]` says token `i` of `row` is
    /// scored (predicted from position `i - 1`). This covers chats with several
    /// assistant turns, where targets come in more than one span. Token 0 has nothing
    /// before it, so it can never be a target.
    pub fn from_targets(rows: &[Vec<u32>], targets: &[Vec<bool>], device: &Device) -> Result<Self> {
        if rows.len() != targets.len() {
            return Err(ModelError::Config(format!(
                "{} rows but {} target masks",
                rows.len(),
                targets.len()
            )));
        }
        if rows.is_empty() {
            return Err(ModelError::Config("nothing to score: the batch is empty".to_string()));
        }
        for (row, (tokens, row_targets)) in rows.iter().zip(targets).enumerate() {
            if tokens.is_empty() {
                return Err(ModelError::Config(format!("row {row} is empty")));
            }
            if tokens.len() != row_targets.len() {
                return Err(ModelError::Config(format!(
                    "row {row} has {} tokens but {} target flags",
                    tokens.len(),
                    row_targets.len()
                )));
            }
            if row_targets.first() == Some(&true) {
                return Err(ModelError::Config(format!(
                    "row {row}: token 0 cannot be a target, no token comes before it \
                     (start the row with the tokenizer's BOS token)"
                )));
            }
        }
        let batch = rows.len();
        let length = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(batch * length);
        let mut mask = Vec::with_capacity(batch * length);
        let mut scored_positions = Vec::new();
        let mut scored_targets = Vec::new();
        let mut rows_of_scored = Vec::new();
        let mut lengths = Vec::with_capacity(batch);
        for (row, (row_tokens, row_targets)) in rows.iter().zip(targets).enumerate() {
            let real = row_tokens.len();
            tokens.extend(row_tokens);
            tokens.extend(std::iter::repeat_n(PADDING, length - real));
            mask.extend(std::iter::repeat_n(1u32, real));
            mask.extend(std::iter::repeat_n(0u32, length - real));
            let mut row_length = 0;
            for (position, (&token, &is_target)) in row_tokens.iter().zip(row_targets).enumerate() {
                if is_target {
                    // Token `position` is predicted by the logits at `position - 1`
                    // (position 0 was rejected above).
                    scored_positions.push((row * length + position - 1) as u32);
                    scored_targets.push(token);
                    rows_of_scored.push(row);
                    row_length += 1;
                }
            }
            lengths.push(row_length);
        }
        let scored = scored_targets.len();
        let mut membership = vec![0f32; batch * scored];
        for (index, row) in rows_of_scored.iter().enumerate() {
            membership[row * scored + index] = 1.0;
        }
        Ok(ScoringBatch {
            tokens: Tensor::from_vec(tokens, (batch, length), device)?,
            mask: Tensor::from_vec(mask, (batch, length), device)?,
            scored_positions: Tensor::from_vec(scored_positions, scored, device)?,
            targets: Tensor::from_slice(&scored_targets, scored, device)?,
            target_ids: scored_targets,
            membership: Tensor::from_vec(membership, (batch, scored), device)?,
            lengths,
        })
    }

    /// Number of target tokens of each row.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Continuation tokens scored in the whole batch.
    pub fn scored(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// The target token of every scored position, in row order.
    pub fn target_ids(&self) -> &[u32] {
        &self.target_ids
    }

    /// The dimensions of `xs` (`[batch, length, last]`) when it covers the batch's tokens.
    fn covering(&self, what: &str, xs: &Tensor) -> Result<(usize, usize, usize)> {
        let (batch, length, last) = xs.dims3()?;
        let (expected_batch, expected_length) = self.tokens.dims2()?;
        if (batch, length) != (expected_batch, expected_length) {
            return Err(ModelError::Config(format!(
                "{what} cover [{batch}, {length}] tokens, the batch [{expected_batch}, {expected_length}]"
            )));
        }
        Ok((batch, length, last))
    }

    /// The rows of `xs` (`[batch, length, width]`, e.g. final hidden states) at the
    /// scored positions: `[scored, width]`, differentiable.
    pub fn scored_rows(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, length, width) = self.covering("hidden states", xs)?;
        Ok(xs.reshape((batch * length, width))?.index_select(&self.scored_positions, 0)?)
    }

    /// Each row's sum of `token_logprobs` (`[scored]`, as [`Self::token_logprobs`] or
    /// [`LanguageModel::target_logprobs`] return them): `[batch]`, differentiable.
    pub fn row_sums(&self, token_logprobs: &Tensor) -> Result<Tensor> {
        let batch = self.lengths.len();
        if self.scored() == 0 {
            return Ok(Tensor::zeros(batch, DType::F32, token_logprobs.device())?);
        }
        Ok(self.membership.matmul(&token_logprobs.unsqueeze(1)?)?.squeeze(1)?)
    }

    /// Log-probability of every continuation token (`[scored]`, in row order) from the
    /// logits of `tokens` (`[batch, length, vocab]`); differentiable.
    pub fn token_logprobs(&self, logits: &Tensor) -> Result<Tensor> {
        let (batch, length, vocab) = self.covering("logits", logits)?;
        if self.scored() == 0 {
            return Ok(Tensor::zeros(0, DType::F32, logits.device())?);
        }
        let rows = logits.reshape((batch * length, vocab))?.index_select(&self.scored_positions, 0)?;
        let max = rows.max_keepdim(D::Minus1)?.detach();
        let shifted = rows.broadcast_sub(&max)?;
        let log_normaliser = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let target_logits = shifted.gather(&self.targets.unsqueeze(1)?, 1)?;
        Ok((target_logits - log_normaliser)?.squeeze(1)?)
    }

    /// Sum of each row's continuation log-probabilities (`[batch]`), differentiable:
    /// what DPO compares and SFT maximises.
    pub fn sequence_logprobs(&self, logits: &Tensor) -> Result<Tensor> {
        self.row_sums(&self.token_logprobs(logits)?)
    }

    /// Splits a `[scored]` tensor from [`Self::token_logprobs`] into one vector per row.
    pub fn split_rows(&self, token_logprobs: &Tensor) -> Result<Vec<Vec<f32>>> {
        let values = token_logprobs.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut rows = Vec::with_capacity(self.lengths.len());
        let mut start = 0;
        for &length in &self.lengths {
            rows.push(values.get(start..start + length).unwrap_or_default().to_vec());
            start += length;
        }
        Ok(rows)
    }
}

/// Per-token log-probabilities of each continuation given its prompt, the batch run in
/// one forward pass (right padding with a mask).
pub fn token_logprobs(
    model: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let batch = ScoringBatch::new(prompts, continuations, model.device())?;
    batch.split_rows(&model.target_logprobs(&batch)?)
}

/// Sum of each continuation's log-probabilities given its prompt (`[batch]`),
/// differentiable when the model's weights are trainable.
pub fn sequence_logprobs(
    model: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
) -> Result<Tensor> {
    let batch = ScoringBatch::new(prompts, continuations, model.device())?;
    batch.row_sums(&model.target_logprobs(&batch)?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::weights::{Model, Trainable};

    fn model_dir(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name)
    }

    /// Reference: log_softmax of transformers' full-sequence logits.
    fn reference(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
        let golden =
            candle_core::safetensors::load(model_dir(name).join("golden.safetensors"), &Device::Cpu).unwrap();
        let ids = golden["input_ids"].to_dtype(DType::U32).unwrap().get(0).unwrap();
        let logits = golden["logits"].get(0).unwrap();
        let logprobs = crate::ops::log_softmax_last_dim(&logits).unwrap();
        (ids.to_vec1().unwrap(), logprobs.to_vec2().unwrap())
    }

    #[test]
    fn matches_log_softmax_of_reference_logits_in_a_padded_batch() {
        for name in ["llama", "gpt2"] {
            let model = Model::load(&model_dir(name), &Device::Cpu).unwrap();
            let (ids, logprobs) = reference(name);
            let split = 5;
            let prompts = vec![ids[..split].to_vec(), vec![3, 4], ids[..split].to_vec()];
            let continuations = vec![ids[split..].to_vec(), vec![9], vec![]];
            let got = token_logprobs(&model, &prompts, &continuations).unwrap();
            assert_eq!(got[1].len(), 1);
            assert!(got[2].is_empty());
            for (offset, value) in got[0].iter().enumerate() {
                let position = split - 1 + offset;
                let expected = logprobs[position][ids[position + 1] as usize];
                assert!((value - expected).abs() < 1e-4, "{name}: {value} != {expected}");
            }
            let alone = token_logprobs(&model, &prompts[1..2], &continuations[1..2]).unwrap();
            assert!((alone[0][0] - got[1][0]).abs() < 1e-5);

            let sums = sequence_logprobs(&model, &prompts, &continuations).unwrap();
            let sums = sums.to_vec1::<f32>().unwrap();
            for (row, sum) in sums.iter().enumerate() {
                let expected: f32 = got[row].iter().sum();
                assert!((sum - expected).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn sequence_logprobs_are_differentiable() {
        let varmap = candle_nn::VarMap::new();
        let model = Model::from_hf_dir(&model_dir("llama"), &Device::Cpu, Trainable::Yes(&varmap)).unwrap();
        let sums =
            sequence_logprobs(&model, &[vec![1, 2, 3], vec![4]], &[vec![5, 6], vec![7, 8, 9]]).unwrap();
        let gradients = sums.sum_all().unwrap().backward().unwrap();
        let embedding = varmap.data().lock().unwrap()["model.embed_tokens.weight"].clone();
        let gradient = gradients.get(embedding.as_tensor()).unwrap();
        assert!(gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn rejects_mismatched_and_empty_prompts() {
        let device = Device::Cpu;
        assert!(ScoringBatch::new(&[vec![1]], &[], &device).is_err());
        let error = ScoringBatch::new(&[vec![]], &[vec![1]], &device).unwrap_err();
        assert!(error.to_string().contains("prompt 0 is empty"), "{error}");
    }
}
