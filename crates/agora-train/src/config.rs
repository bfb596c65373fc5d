//! A training run's configuration: one TOML file (closed types, unknown fields refused)
//! whose every field a command-line flag or a sweep may override by its dotted path
//! (`optimizer.learning_rate`). The resolved configuration is written into the run
//! folder, so a run always says exactly what it did.

use std::path::{Path, PathBuf};

use agora_model::lora::LoraConfig;
use agora_model::train::loss::{DpoConfig, DpoLossKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning: the likelihood of the completions.
    Sft,
    /// Direct preference optimisation: chosen over rejected, against a frozen reference.
    Dpo,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Dpo => "dpo",
        }
    }
}

/// How the training files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// TRL's JSONL layouts (what `agora build` writes).
    #[default]
    Trl,
    /// PersonaGPT's special-token layout, from a Persona-Chat corpus in the workspace.
    Personagpt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub method: Method,
    /// A model reference: a GGUF file, a Hugging Face folder, or `org/name` from the
    /// local Hugging Face cache. GGUF weights are dequantized to f32 for training.
    pub model: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    /// Absent: full fine-tuning of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub training: LoopConfig,
    #[serde(default)]
    pub dpo: DpoSection,
    #[serde(default)]
    pub samples: SamplesConfig,
}

fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The training file (TRL JSONL), or for the PersonaGPT layout the corpus name.
    pub train: PathBuf,
    /// Held-out examples for evaluation (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<PathBuf>,
    #[serde(default)]
    pub layout: Layout,
    /// Longest sequence (prompt + completion) trained on; longer ones are skipped and
    /// counted.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Prompts are cut to this many tokens from the left (their end kept) first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_length: Option<usize>,
}

fn default_max_length() -> usize {
    512
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Gradients are scaled down to this global L2 norm; `None` (or 0) = no clipping.
    pub max_grad_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        // Hugging Face Trainer's defaults.
        OptimizerConfig {
            learning_rate: 5e-5,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_grad_norm: Some(1.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0; wins over `warmup_ratio` when both are set.
    pub warmup_steps: usize,
    /// Warm-up as a share of all optimizer steps (Hugging Face's `warmup_ratio`).
    pub warmup_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Examples (or preference pairs) per forward pass.
    pub batch_size: usize,
    /// Forward passes whose gradients add up to one optimizer step.
    pub gradient_accumulation_steps: usize,
    pub epochs: usize,
    /// Trains exactly this many optimizer steps, over as many epochs as that takes (it
    /// wins over `epochs`, as in transformers' Trainer).
    pub max_steps: Option<usize>,
    /// Evaluates every this many optimizer steps (and at the end of each epoch).
    pub eval_every: Option<usize>,
    /// Writes a checkpoint every this many optimizer steps (and at the end).
    pub save_every: Option<usize>,
    /// Stops when the evaluation loss has not improved this many evaluations in a row.
    pub early_stopping_patience: Option<usize>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            batch_size: 4,
            gradient_accumulation_steps: 1,
            epochs: 1,
            max_steps: None,
            eval_every: None,
            save_every: None,
            early_stopping_patience: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    pub beta: f64,
    pub loss: DpoLossKind,
    pub label_smoothing: f64,
}

impl Default for DpoSection {
    fn default() -> Self {
        DpoSection { beta: 0.1, loss: DpoLossKind::Sigmoid, label_smoothing: 0.0 }
    }
}

impl DpoSection {
    pub fn loss_config(&self) -> DpoConfig {
        DpoConfig { beta: self.beta, loss: self.loss, label_smoothing: self.label_smoothing }
    }
}

/// Generations on fixed prompts at the start and after every epoch, the trained model
/// next to the reference (the start model), written to the run's `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplesConfig {
    /// User messages (rendered with the chat template) to continue.
    pub prompts: Vec<String>,
    pub max_new_tokens: usize,
}

impl Default for SamplesConfig {
    fn default() -> Self {
        SamplesConfig { prompts: Vec::new(), max_new_tokens: 48 }
    }
}

impl TrainConfig {
    /// Reads a TOML file, applies `overrides` (dotted path, value) and checks the result.
    pub fn read(path: &Path, overrides: &[(String, serde_json::Value)]) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        let mut value: toml::Value = toml::from_str(&text)
            .map_err(|error| TrainError::Config { file: path.to_path_buf(), message: one_line(&error) })?;
        crate::sweep::apply_overrides(&mut value, overrides)?;
        TrainConfig::from_toml(value, path)
    }

    /// Checks a configuration held as a TOML value (`origin` is named in errors).
    pub fn from_toml(value: toml::Value, origin: &Path) -> Result<TrainConfig> {
        let config: TrainConfig = value.try_into().map_err(|error: toml::de::Error| TrainError::Config {
            file: origin.to_path_buf(),
            message: one_line(&error),
        })?;
        config.validate().map_err(|message| TrainError::Config { file: origin.to_path_buf(), message })?;
        Ok(config)
    }

    /// Meaningless settings, named by their field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("training.batch_size", self.training.batch_size),
            ("training.gradient_accumulation_steps", self.training.gradient_accumulation_steps),
            ("training.epochs", self.training.epochs),
            ("data.max_length", self.data.max_length),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{field} must be at least 1"));
            }
        }
        for (field, value) in [
            ("training.max_steps", self.training.max_steps),
            ("training.eval_every", self.training.eval_every),
            ("training.save_every", self.training.save_every),
            ("training.early_stopping_patience", self.training.early_stopping_patience),
        ] {
            if value == Some(0) {
                return Err(format!("{field} must be at least 1 (leave it out to switch it off)"));
            }
        }
        let optimizer = &self.optimizer;
        if !(optimizer.learning_rate.is_finite() && optimizer.learning_rate >= 0.0) {
            return Err(format!(
                "optimizer.learning_rate {} is not a non-negative number",
                optimizer.learning_rate
            ));
        }
        for (field, value) in [("optimizer.beta1", optimizer.beta1), ("optimizer.beta2", optimizer.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(format!("{field} {value} must be in [0, 1)"));
            }
        }
        if optimizer.epsilon.is_nan() || optimizer.epsilon <= 0.0 {
            return Err(format!("optimizer.epsilon {} must be positive", optimizer.epsilon));
        }
        if optimizer.weight_decay < 0.0 || !optimizer.weight_decay.is_finite() {
            return Err(format!("optimizer.weight_decay {} must be non-negative", optimizer.weight_decay));
        }
        if !(0.0..=1.0).contains(&self.schedule.warmup_ratio) {
            return Err(format!("schedule.warmup_ratio {} must be in [0, 1]", self.schedule.warmup_ratio));
        }
        if self.method == Method::Dpo {
            if !(self.dpo.beta > 0.0 && self.dpo.beta.is_finite()) {
                return Err(format!("dpo.beta {} must be positive", self.dpo.beta));
            }
            if !(0.0..0.5).contains(&self.dpo.label_smoothing) {
                return Err(format!("dpo.label_smoothing {} must be in [0, 0.5)", self.dpo.label_smoothing));
            }
        }
        if self.data.layout == Layout::Personagpt && self.method != Method::Sft {
            return Err("data.layout `personagpt` trains with method `sft`".to_string());
        }
        Ok(())
    }

    /// The configuration as pretty JSON (what the run folder keeps).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// TOML errors span several lines (a code excerpt); the first says what is wrong.
fn one_line(error: &toml::de::Error) -> String {
    error.to_string().lines().filter(|line| !line.trim().is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainConfig> {
        TrainConfig::from_toml(toml::from_str(text).unwrap(), Path::new("train.toml"))
    }

    #[test]
    fn a_minimal_file_gets_hugging_face_defaults() {
        let config = parse("method = \"sft\"\nmodel = \"m\"\n[data]\ntrain = \"t.jsonl\"\n").unwrap();
        assert_eq!(config.optimizer.learning_rate, 5e-5);
        assert_eq!(config.schedule.kind, ScheduleKind::Linear);
        assert_eq!(config.training.batch_size, 4);
        assert_eq!(config.data.max_length, 512);
        assert_eq!(config.seed, 42);
        assert!(config.lora.is_none());
    }

    #[test]
    fn unknown_fields_and_meaningless_values_are_refused_by_name() {
        let error =
            parse("method = \"sft\"\nmodel = \"m\"\nlerning_rate = 1\n[data]\ntrain = \"t\"\n").unwrap_err();
        assert!(error.to_string().contains("lerning_rate"), "{error}");
        let error =
            parse("method = \"dpo\"\nmodel = \"m\"\n[data]\ntrain = \"t\"\n[dpo]\nbeta = 0.0\n").unwrap_err();
        assert!(error.to_string().contains("dpo.beta"), "{error}");
        let error =
            parse("method = \"sft\"\nmodel = \"m\"\n[data]\ntrain = \"t\"\n[training]\nbatch_size = 0\n")
                .unwrap_err();
        assert!(error.to_string().contains("training.batch_size"), "{error}");
    }
}
