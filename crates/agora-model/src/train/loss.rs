//! Training losses: supervised fine-tuning cross-entropy and DPO with TRL's loss
//! variants, each a differentiable scalar plus the numbers TRL logs.
//!
//! The formulas follow TRL 1.16.0 (`DPOTrainer._compute_loss` in
//! `trl/trainer/dpo_trainer.py`), except the label smoothing of the sigmoid loss
//! (conservative DPO), which TRL 1.16 dropped and TRL 0.x applied in
//! `DPOTrainer.dpo_loss`; with `label_smoothing = 0` both versions agree.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::scoring::ScoringBatch;
use crate::{ModelError, Result};

/// Mean negative log-likelihood over every target token of the batch: what
/// transformers' `model(input_ids, attention_mask=..., labels=...)` returns when
/// non-target positions carry the label -100 (the one-token shift included: the
/// logits at position `i - 1` predict token `i`). A scalar, differentiable.
///
/// `token_logprobs` are the batch's target log-probabilities, `[scored]`, as
/// [`crate::LanguageModel::target_logprobs`] (or [`ScoringBatch::token_logprobs`] of
/// full logits) returns them. A batch without a single target is an error rather than a
/// NaN that would poison the weights.
///
/// Accumulating micro-batches: to reproduce the mean over all target tokens of the
/// whole batch (transformers' `num_items_in_batch`), pass
/// `scale = batch.scored() / total_targets` to [`crate::train::Gradients::accumulate`].
pub fn sft_loss(batch: &ScoringBatch, token_logprobs: &Tensor) -> Result<Tensor> {
    let targets = batch.scored();
    if targets == 0 {
        return Err(ModelError::Config(
            "SFT loss of a batch without target tokens: every row's targets are masked out".to_string(),
        ));
    }
    if token_logprobs.dims() != [targets] {
        return Err(ModelError::Config(format!(
            "SFT loss of {:?} log-probs for a batch of {targets} targets",
            token_logprobs.dims()
        )));
    }
    Ok((token_logprobs.sum_all()? * (-1.0 / targets as f64))?)
}

/// Which DPO loss to minimise, named as TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLossKind {
    /// `-(1 - ε)·log σ(βΔ) - ε·log σ(-βΔ)`: DPO (Rafailov et al. 2023), and with label
    /// smoothing ε > 0 conservative DPO (cDPO).
    #[default]
    Sigmoid,
    /// `(Δ̄ - 1/(2β))²` on per-token mean log-probabilities (IPO, Azar et al. 2023).
    Ipo,
    /// `max(0, 1 - βΔ)` (SLiC-style hinge).
    Hinge,
    /// `(-(1 - ε)·log σ(βΔ) + ε·log σ(-βΔ)) / (1 - 2ε)`: robust DPO (Chowdhury et al.
    /// 2024), unbiased under preference labels flipped with probability ε.
    Robust,
}

impl DpoLossKind {
    pub const ALL: [DpoLossKind; 4] =
        [DpoLossKind::Sigmoid, DpoLossKind::Ipo, DpoLossKind::Hinge, DpoLossKind::Robust];

    /// The name TRL and agora's config files use.
    pub fn name(self) -> &'static str {
        match self {
            DpoLossKind::Sigmoid => "sigmoid",
            DpoLossKind::Ipo => "ipo",
            DpoLossKind::Hinge => "hinge",
            DpoLossKind::Robust => "robust",
        }
    }

    /// Whether [`dpo_loss`] expects per-token *mean* log-probabilities (sum over the
    /// completion divided by its number of tokens) instead of sums. True for IPO only:
    /// TRL divides IPO's log-ratios by the completion lengths, so that β means the same
    /// thing for short and long completions. The rewards in [`DpoMetrics`] are then
    /// per-token too (as TRL 0.x logged them; TRL 1.16 logs IPO rewards from sums).
    pub fn uses_mean_logps(self) -> bool {
        matches!(self, DpoLossKind::Ipo)
    }
}

impl fmt::Display for DpoLossKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for DpoLossKind {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self> {
        DpoLossKind::ALL.into_iter().find(|kind| kind.name() == text).ok_or_else(|| {
            ModelError::Config(format!(
                "unknown DPO loss {text:?}: expected one of sigmoid, ipo, hinge, robust"
            ))
        })
    }
}

/// The settings of [`dpo_loss`]; defaults are TRL's `DPOConfig` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// How far the policy may move from the reference (for IPO: the regulariser τ).
    pub beta: f64,
    pub loss: DpoLossKind,
    /// Probability ε that a preference label is flipped: used by `sigmoid` (cDPO) and
    /// `robust` (which needs ε < 0.5); ignored by `ipo` and `hinge`, as in TRL.
    pub label_smoothing: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig { beta: 0.1, loss: DpoLossKind::Sigmoid, label_smoothing: 0.0 }
    }
}

impl DpoConfig {
    /// Rejects settings that make the loss meaningless or infinite.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(ModelError::Config(format!("DPO beta must be positive, got {}", self.beta)));
        }
        let smoothing = self.label_smoothing;
        let (valid, range) = match self.loss {
            DpoLossKind::Robust => ((0.0..0.5).contains(&smoothing), "[0, 0.5)"),
            _ => ((0.0..=1.0).contains(&smoothing), "[0, 1]"),
        };
        if !valid {
            return Err(ModelError::Config(format!(
                "DPO label_smoothing {smoothing} is outside {range} for the {} loss",
                self.loss
            )));
        }
        Ok(())
    }
}

/// What TRL logs for a DPO batch, each a mean over the batch's pairs. Rewards are the
/// implicit rewards `β·(policy - reference)` of the log-probabilities passed in.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DpoMetrics {
    /// `rewards/chosen`
    pub rewards_chosen: f64,
    /// `rewards/rejected`
    pub rewards_rejected: f64,
    /// `rewards/margins`: chosen minus rejected reward.
    pub rewards_margins: f64,
    /// `rewards/accuracies`: fraction of pairs whose chosen reward is strictly higher.
    pub rewards_accuracies: f64,
    /// `logps/chosen`: the policy's log-probabilities of the chosen completions.
    pub logps_chosen: f64,
    /// `logps/rejected`
    pub logps_rejected: f64,
}

/// The loss of a DPO batch and its logged metrics.
#[derive(Debug, Clone)]
pub struct DpoOutput {
    /// Scalar mean over the pairs, differentiable with respect to the policy inputs.
    pub loss: Tensor,
    pub metrics: DpoMetrics,
}

/// The DPO loss of a batch of preference pairs from sequence log-probabilities, each a
/// `[batch]` tensor: sums over the completion tokens, or per-token means when
/// `config.loss.uses_mean_logps()` (IPO). Gradients flow into the two policy inputs;
/// the reference inputs are treated as constants.
///
/// The arithmetic runs in f64 (the tensors are tiny) so that `log σ` stays accurate
/// far into its tails; the loss comes back in the policy's dtype.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    config: &DpoConfig,
) -> Result<DpoOutput> {
    config.validate()?;
    let batch = policy_chosen.dims1().map_err(|_| shape_error("policy_chosen", policy_chosen))?;
    for (name, tensor) in [
        ("policy_rejected", policy_rejected),
        ("reference_chosen", reference_chosen),
        ("reference_rejected", reference_rejected),
    ] {
        if tensor.dims() != [batch] {
            return Err(ModelError::Config(format!(
                "DPO input {name} has shape {:?}, policy_chosen has [{batch}]",
                tensor.dims()
            )));
        }
    }
    if batch == 0 {
        return Err(ModelError::Config("DPO loss of an empty batch".to_string()));
    }
    let output_dtype = policy_chosen.dtype();
    let wide = |tensor: &Tensor| tensor.to_dtype(DType::F64);
    let chosen_logratios = (wide(policy_chosen)? - wide(&reference_chosen.detach())?)?;
    let rejected_logratios = (wide(policy_rejected)? - wide(&reference_rejected.detach())?)?;
    let delta = (&chosen_logratios - &rejected_logratios)?;
    let beta = config.beta;
    let smoothing = config.label_smoothing;
    let scaled = (&delta * beta)?;
    let per_pair = match config.loss {
        DpoLossKind::Sigmoid => {
            let agree = (log_sigmoid(&scaled)? * -(1.0 - smoothing))?;
            let flipped = (log_sigmoid(&scaled.neg()?)? * smoothing)?;
            (agree - flipped)?
        }
        DpoLossKind::Robust => {
            let clean = (log_sigmoid(&scaled)? * -(1.0 - smoothing))?;
            let flipped = (log_sigmoid(&scaled.neg()?)? * -smoothing)?;
            ((clean - flipped)? / (1.0 - 2.0 * smoothing))?
        }
        DpoLossKind::Hinge => scaled.affine(-1.0, 1.0)?.relu()?,
        DpoLossKind::Ipo => (&delta - 1.0 / (2.0 * beta))?.sqr()?,
    };
    let loss = per_pair.mean_all()?.to_dtype(output_dtype)?;

    let chosen_rewards = (chosen_logratios.detach() * beta)?.to_vec1::<f64>()?;
    let rejected_rewards = (rejected_logratios.detach() * beta)?.to_vec1::<f64>()?;
    let pairs = batch as f64;
    let mean = |values: &[f64]| values.iter().sum::<f64>() / pairs;
    let margins: Vec<f64> = chosen_rewards.iter().zip(&rejected_rewards).map(|(c, r)| c - r).collect();
    let accurate = chosen_rewards.iter().zip(&rejected_rewards).filter(|(c, r)| c > r).count();
    let metrics = DpoMetrics {
        rewards_chosen: mean(&chosen_rewards),
        rewards_rejected: mean(&rejected_rewards),
        rewards_margins: mean(&margins),
        rewards_accuracies: accurate as f64 / pairs,
        logps_chosen: mean(&wide(&policy_chosen.detach())?.to_vec1::<f64>()?),
        logps_rejected: mean(&wide(&policy_rejected.detach())?.to_vec1::<f64>()?),
    };
    Ok(DpoOutput { loss, metrics })
}

fn shape_error(name: &str, tensor: &Tensor) -> ModelError {
    ModelError::Config(format!("DPO input {name} must be a [batch] vector, got shape {:?}", tensor.dims()))
}

/// `log σ(x) = -(max(-x, 0) + ln(1 + e^{-|x|}))`, differentiable and accurate far
/// into both tails (candle has neither a fused log-sigmoid nor `log1p`).
fn log_sigmoid(xs: &Tensor) -> Result<Tensor> {
    let small = xs.abs()?.neg()?.exp()?;
    Ok((xs.neg()?.relu()? + log_one_plus(&small)?)?.neg()?)
}

/// `ln(1 + e)` for `e` in [0, 1]. Below 1e-4, `1 + e` would round away most of `e`'s
/// digits, so the series `e - e²/2 + e³/3` (relative error under 1e-12) takes over.
fn log_one_plus(small: &Tensor) -> Result<Tensor> {
    let direct = small.affine(1.0, 1.0)?.log()?;
    // e - e²/2 + e³/3 = e·(1 - e·(1/2 - e/3))
    let inner = small.affine(-1.0 / 3.0, 0.5)?;
    let middle = (small * inner)?.affine(-1.0, 1.0)?;
    let series = (small * middle)?;
    let use_series = small.lt(1e-4)?;
    Ok(use_series.where_cond(&series, &direct)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn vector(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn scalar(tensor: &Tensor) -> f64 {
        tensor.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    fn log_sigmoid_reference(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn sft_loss_of_a_batch_without_targets_is_an_error() {
        let batch =
            ScoringBatch::from_targets(&[vec![1, 2, 3]], &[vec![false, false, false]], &Device::Cpu).unwrap();
        let logprobs = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
        let error = sft_loss(&batch, &logprobs).unwrap_err();
        assert!(error.to_string().contains("without target tokens"), "{error}");
    }

    #[test]
    fn sft_loss_of_uniform_logits_is_log_vocab() {
        let batch = ScoringBatch::from_targets(
            &[vec![1, 2, 3, 4], vec![5, 6]],
            &[vec![false, true, false, true], vec![false, true]],
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(batch.lengths(), [2, 1]);
        let logits = Tensor::zeros((2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let loss = scalar(&sft_loss(&batch, &batch.token_logprobs(&logits).unwrap()).unwrap());
        assert!((loss - 8f64.ln()).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn each_variant_matches_its_formula() {
        let (pc, pr, rc, rr) = ([-3.0f32, -7.5], [-4.0f32, -6.0], [-3.5f32, -7.0], [-3.0f32, -6.5]);
        let deltas: Vec<f64> = (0..2)
            .map(|i| (f64::from(pc[i]) - f64::from(rc[i])) - (f64::from(pr[i]) - f64::from(rr[i])))
            .collect();
        for loss in DpoLossKind::ALL {
            let config = DpoConfig { beta: 0.5, loss, label_smoothing: 0.2 };
            let output = dpo_loss(&vector(&pc), &vector(&pr), &vector(&rc), &vector(&rr), &config).unwrap();
            let expected: f64 = deltas
                .iter()
                .map(|&delta| {
                    let z = 0.5 * delta;
                    match loss {
                        DpoLossKind::Sigmoid => {
                            -0.8 * log_sigmoid_reference(z) - 0.2 * log_sigmoid_reference(-z)
                        }
                        DpoLossKind::Robust => {
                            (-0.8 * log_sigmoid_reference(z) + 0.2 * log_sigmoid_reference(-z)) / 0.6
                        }
                        DpoLossKind::Hinge => (1.0 - z).max(0.0),
                        DpoLossKind::Ipo => (delta - 1.0).powi(2),
                    }
                })
                .sum::<f64>()
                / 2.0;
            let got = scalar(&output.loss);
            assert!((got - expected).abs() < 1e-6 * expected.abs().max(1.0), "{loss}: {got} != {expected}");
            let metrics = output.metrics;
            assert!((metrics.rewards_chosen - 0.5 * (0.5 + -0.5) / 2.0).abs() < 1e-9);
            assert!((metrics.rewards_rejected - 0.5 * (-1.0 + 0.5) / 2.0).abs() < 1e-9);
            assert!(
                (metrics.rewards_margins - (metrics.rewards_chosen - metrics.rewards_rejected)).abs() < 1e-12
            );
            assert_eq!(metrics.rewards_accuracies, 0.5);
            assert_eq!(metrics.logps_chosen, -5.25);
            assert_eq!(metrics.logps_rejected, -5.0);
        }
    }

    #[test]
    fn log_sigmoid_stays_accurate_in_its_tails() {
        let xs = Tensor::new(&[-800.0f64, -30.0, 0.0, 30.0, 800.0], &Device::Cpu).unwrap();
        let got = log_sigmoid(&xs).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(got[0], -800.0);
        assert!((got[1] + 30.0).abs() < 1e-12);
        assert!((got[2] + 2f64.ln()).abs() < 1e-15);
        assert!((got[3] + (-30f64).exp()).abs() < 1e-24, "{}", got[3]);
        assert_eq!(got[4], 0.0);
    }

    #[test]
    fn gradients_reach_the_policy_and_not_the_reference() {
        let policy_chosen = Var::new(&[-3.0f32, -2.0], &Device::Cpu).unwrap();
        let policy_rejected = Var::new(&[-4.0f32, -1.0], &Device::Cpu).unwrap();
        let reference = Var::new(&[-3.5f32, -2.5], &Device::Cpu).unwrap();
        let output = dpo_loss(
            policy_chosen.as_tensor(),
            policy_rejected.as_tensor(),
            reference.as_tensor(),
            reference.as_tensor(),
            &DpoConfig::default(),
        )
        .unwrap();
        assert_eq!(output.loss.dtype(), DType::F32);
        let gradients = output.loss.backward().unwrap();
        let chosen = gradients.get(policy_chosen.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let rejected = gradients.get(policy_rejected.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(chosen.iter().all(|&value| value < 0.0), "{chosen:?}");
        assert!(rejected.iter().zip(&chosen).all(|(r, c)| (r + c).abs() < 1e-7));
        assert!(gradients.get(reference.as_tensor()).is_none());
    }

    #[test]
    fn bad_inputs_and_settings_are_errors() {
        let ok = vector(&[-1.0, -2.0]);
        let short = vector(&[-1.0]);
        let config = DpoConfig::default();
        let error = dpo_loss(&ok, &ok, &short, &ok, &config).unwrap_err();
        assert!(error.to_string().contains("reference_chosen"), "{error}");
        let empty = vector(&[]);
        assert!(dpo_loss(&empty, &empty, &empty, &empty, &config).is_err());
        let robust = DpoConfig { loss: DpoLossKind::Robust, label_smoothing: 0.5, ..config };
        assert!(dpo_loss(&ok, &ok, &ok, &ok, &robust).unwrap_err().to_string().contains("[0, 0.5)"));
        let negative_beta = DpoConfig { beta: -0.1, ..config };
        assert!(dpo_loss(&ok, &ok, &ok, &ok, &negative_beta).is_err());
    }

    #[test]
    fn loss_kinds_parse_and_serialise_by_trl_name() {
        for kind in DpoLossKind::ALL {
            assert_eq!(kind.name().parse::<DpoLossKind>().unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert!("Sigmoid".parse::<DpoLossKind>().unwrap_err().to_string().contains("sigmoid, ipo"));
        assert!(DpoLossKind::Ipo.uses_mean_logps());
        assert!(!DpoLossKind::Robust.uses_mean_logps());
        let config: DpoConfig =
            serde_json::from_str(r#"{"loss": "robust", "label_smoothing": 0.1}"#).unwrap();
        assert_eq!(config, DpoConfig { beta: 0.1, loss: DpoLossKind::Robust, label_smoothing: 0.1 });
    }
}
