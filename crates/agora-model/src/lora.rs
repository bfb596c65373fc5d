//! LoRA adapters on a model's linear layers, in PEFT's layout: each adapted layer adds
//! `scale · dropout(x) · Aᵀ · Bᵀ` to its output (`A [rank, in]`, `B [out, rank]`,
//! `scale = alpha / rank`), the base weights stay frozen, and an adapter folder
//! (`adapter_config.json` + `adapter_model.safetensors` with PEFT's tensor names) is read
//! and written exactly as Python's `peft` does, so either side can train and the other
//! load. [`LoraAdapters::merge`] folds the adapters into the dense weights.
//!
//! The adapters' variables live in their own `VarMap` (an optimizer over it trains the
//! adapters only); the model's layers hold the adapters through shared pointers, so
//! switching them off (DPO's reference model) or into training mode needs no access to
//! the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use agora_core::{SplitMix64, mix64};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{create_dir, save_varmap, write_json};
use crate::weights::{Linear, Model, Weight, matmul_last_dim, register_var};
use crate::{ModelError, Result};

/// `target_modules` value that adapts every linear layer but the output head.
pub const ALL_LINEAR: &str = "all-linear";
const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix for a causal LM's tensors (`PeftModelForCausalLM.base_model.model`).
const PEFT_PREFIX: &str = "base_model.model.";

/// Which layers get adapters and how large they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// The inner dimension of `A` and `B` (PEFT's `r`).
    pub rank: usize,
    /// The adapter's output is scaled by `alpha / rank` (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// Dropout on the adapter's input while training, in `[0, 1)`.
    pub dropout: f64,
    /// Module names matched as PEFT matches them: a layer is adapted when its full name
    /// equals a target or ends with `.` + target (`q_proj`, `self_attn.v_proj`, GPT-2's
    /// `c_attn`); `all-linear` adapts every linear layer but the output head.
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(ModelError::Config("LoRA rank must be at least 1".to_string()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Config(format!("LoRA dropout {} is outside [0, 1)", self.dropout)));
        }
        if !self.alpha.is_finite() {
            return Err(ModelError::Config(format!("LoRA alpha {} is not a finite number", self.alpha)));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::Config("LoRA target_modules is empty".to_string()));
        }
        Ok(())
    }

    /// `alpha / rank`, the factor on every adapter's output.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|target| target == ALL_LINEAR || matches_target(target, module))
    }
}

/// The switches every adapter of one [`LoraAdapters`] shares.
#[derive(Debug)]
struct Switches {
    enabled: AtomicBool,
    training: AtomicBool,
    step_seed: AtomicU64,
}

/// The adapter of one linear layer, held by the layer ([`Linear::lora`]) and by the
/// [`LoraAdapters`] that made it.
#[derive(Debug)]
pub struct LoraLayer {
    /// The Hugging Face module name, e.g. `model.layers.0.self_attn.q_proj`.
    module: String,
    /// `[rank, in]`, the tensor of a `Var`.
    a: Tensor,
    /// `[out, rank]`, the tensor of a `Var`.
    b: Tensor,
    scale: f64,
    dropout: f64,
    /// The layer's position among the adapted layers, which seeds its dropout masks.
    index: u64,
    /// Forward passes since the last `set_training`, so two passes of one step (gradient
    /// accumulation, DPO's chosen and rejected) draw different masks.
    calls: AtomicU64,
    switches: Arc<Switches>,
}

impl LoraLayer {
    pub fn module(&self) -> &str {
        &self.module
    }

    /// `output + scale · dropout(xs) · Aᵀ · Bᵀ` (just `output` while switched off).
    pub(crate) fn add_to(&self, xs: &Tensor, output: Tensor) -> Result<Tensor> {
        if !self.switches.enabled.load(Ordering::Relaxed) {
            return Ok(output);
        }
        let dropped;
        let input = if self.dropout > 0.0 && self.switches.training.load(Ordering::Relaxed) {
            dropped = (xs * self.dropout_mask(xs)?)?;
            &dropped
        } else {
            xs
        };
        let low_rank = matmul_last_dim(input, &self.a.t()?)?;
        let update = (matmul_last_dim(&low_rank, &self.b.t()?)? * self.scale)?;
        Ok((output + update)?)
    }

    /// Inverted dropout as torch does it: each element kept with probability `1 - p`
    /// and scaled by `1 / (1 - p)`. The mask comes from SplitMix64 seeded by the step,
    /// the layer and the call, so a resumed run draws the same masks.
    fn dropout_mask(&self, xs: &Tensor) -> Result<Tensor> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let step_seed = self.switches.step_seed.load(Ordering::Relaxed);
        let mut random = SplitMix64::new(mix64(step_seed) ^ mix64(self.index.wrapping_add(1)) ^ mix64(!call));
        let keep = (1.0 / (1.0 - self.dropout)) as f32;
        let mask: Vec<f32> =
            (0..xs.elem_count()).map(|_| if random.next_f64() < self.dropout { 0.0 } else { keep }).collect();
        Ok(Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?)
    }
}

/// The LoRA adapters attached to one model.
pub struct LoraAdapters {
    config: LoraConfig,
    /// Whether the adapted layers store `[in, out]` weights (GPT-2's `Conv1D`), which
    /// PEFT records as `fan_in_fan_out`.
    fan_in_fan_out: bool,
    varmap: VarMap,
    layers: Vec<Arc<LoraLayer>>,
    switches: Arc<Switches>,
}

impl std::fmt::Debug for LoraAdapters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LoraAdapters")
            .field("config", &self.config)
            .field("fan_in_fan_out", &self.fan_in_fan_out)
            .field("modules", &self.modules())
            .finish_non_exhaustive()
    }
}

impl LoraAdapters {
    /// Attaches fresh adapters to the layers `config` targets, initialised as PEFT does
    /// by default: `A` Kaiming-uniform with `a = sqrt(5)` (uniform in ±1/sqrt(in)),
    /// drawn from SplitMix64 seeded with `seed` in model order, and `B` zero, so the
    /// model's output is unchanged until the first step. Load the model with
    /// `Trainable::No`: the base weights then stay plain tensors (gradients still flow
    /// through them to earlier layers) and only [`LoraAdapters::varmap`] is trained.
    pub fn attach(model: &mut Model, config: &LoraConfig, seed: u64) -> Result<LoraAdapters> {
        config.validate()?;
        let mut layers = model.linear_layers_mut()?;
        for target in &config.target_modules {
            if target != ALL_LINEAR && !layers.iter().any(|(module, _)| matches_target(target, module)) {
                return Err(ModelError::Config(format!(
                    "LoRA target module `{target}` matches no linear layer of this model; its modules \
                     are {} (or `{ALL_LINEAR}`)",
                    module_names(&layers)
                )));
            }
        }
        let mut random = SplitMix64::new(seed);
        let mut build = Builder::new(config.clone());
        for (module, linear) in layers.iter_mut() {
            if !config.targets(module) {
                continue;
            }
            let (in_features, out_features) = dense_features(module, linear)?;
            let bound = 1.0 / (in_features as f64).sqrt();
            let values: Vec<f32> = (0..config.rank * in_features)
                .map(|_| ((random.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let device = linear.dense_weight()?.device().clone();
            let a = Tensor::from_vec(values, (config.rank, in_features), &device)?;
            let b = Tensor::zeros((out_features, config.rank), DType::F32, &device)?;
            build.add(module, linear, a, b)?;
        }
        Ok(build.finish())
    }

    /// Reads an adapter folder written by [`LoraAdapters::save_peft`] or by PEFT's
    /// `save_pretrained` and attaches it to `model`.
    pub fn load_peft(model: &mut Model, dir: &Path) -> Result<LoraAdapters> {
        let config_path = dir.join(CONFIG_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        let peft: PeftConfig = crate::weights::read_config(&config_path)?;
        let config = peft.resolve(&config_path)?;
        if !weights_path.is_file() {
            return Err(ModelError::file(&weights_path, "missing adapter weights file"));
        }
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|error| {
            ModelError::file(
                &weights_path,
                format!("not a valid safetensors file: {}", crate::weights::describe(error)),
            )
        })?;
        // module name -> (A, B) as read.
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (name, tensor) in tensors {
            let module_and_kind = name.strip_prefix(PEFT_PREFIX).and_then(|rest| {
                rest.strip_suffix(".lora_A.weight")
                    .map(|module| (module, true))
                    .or_else(|| rest.strip_suffix(".lora_B.weight").map(|module| (module, false)))
            });
            let Some((module, is_a)) = module_and_kind else {
                return Err(ModelError::file(
                    &weights_path,
                    format!(
                        "tensor `{name}` is not a LoRA weight (expected \
                         `{PEFT_PREFIX}<module>.lora_A.weight` or `.lora_B.weight`)"
                    ),
                ));
            };
            let entry = pairs.entry(module.to_string()).or_default();
            if is_a {
                entry.0 = Some(tensor);
            } else {
                entry.1 = Some(tensor);
            }
        }
        let mut layers = model.linear_layers_mut()?;
        if let Some(unknown) = pairs.keys().find(|module| !layers.iter().any(|(name, _)| name == *module)) {
            return Err(ModelError::file(
                &weights_path,
                format!(
                    "LoRA weights for module `{unknown}`, which this model does not have; its linear \
                     layers are named like {}",
                    example_names(&layers)
                ),
            ));
        }
        let mut build = Builder::new(config);
        for (module, linear) in layers.iter_mut() {
            let Some((a, b)) = pairs.remove(module.as_str()) else {
                continue;
            };
            let name = |kind: &str| format!("{PEFT_PREFIX}{module}.{kind}.weight");
            let (Some(a), Some(b)) = (a, b) else {
                return Err(ModelError::file(
                    &weights_path,
                    format!("module `{module}` needs both `{}` and `{}`", name("lora_A"), name("lora_B")),
                ));
            };
            let (in_features, out_features) = dense_features(module, linear)?;
            let rank = build.config.rank;
            for (kind, tensor, expected) in
                [("lora_A", &a, [rank, in_features]), ("lora_B", &b, [out_features, rank])]
            {
                if tensor.dims() != expected {
                    return Err(ModelError::file(
                        &weights_path,
                        format!(
                            "tensor `{}` has shape {:?}, expected {expected:?} (rank {rank}, layer \
                             [{in_features} in, {out_features} out])",
                            name(kind),
                            tensor.dims()
                        ),
                    ));
                }
            }
            let device = linear.dense_weight()?.device().clone();
            let a = a.to_dtype(DType::F32)?.to_device(&device)?;
            let b = b.to_dtype(DType::F32)?.to_device(&device)?;
            build.add(module, linear, a, b)?;
        }
        if build.layers.is_empty() {
            return Err(ModelError::file(&weights_path, "holds no LoRA weights"));
        }
        Ok(build.finish())
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapters' variables under PEFT's tensor names
    /// (`base_model.model.<module>.lora_A.weight`): what the optimizer trains.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The Hugging Face names of the adapted modules, in model order.
    pub fn modules(&self) -> Vec<&str> {
        self.layers.iter().map(|layer| layer.module()).collect()
    }

    /// Switches every adapter on or off; off, the model computes exactly the base model
    /// (DPO's reference under LoRA).
    pub fn set_enabled(&self, on: bool) {
        self.switches.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.switches.enabled.load(Ordering::Relaxed)
    }

    /// Training mode turns dropout on, with masks drawn from `step_seed` (use the
    /// optimizer step, so a resumed run reproduces them); evaluation mode turns it off.
    pub fn set_training(&self, on: bool, step_seed: u64) {
        self.switches.training.store(on, Ordering::Relaxed);
        self.switches.step_seed.store(step_seed, Ordering::Relaxed);
        for layer in &self.layers {
            layer.calls.store(0, Ordering::Relaxed);
        }
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` as PEFT's
    /// `save_pretrained` does, so `PeftModel.from_pretrained(base, dir)` loads them;
    /// `base_model` becomes `base_model_name_or_path`.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        create_dir(dir)?;
        // `all-linear` is written expanded to the distinct last components of the
        // adapted layers, as PEFT does; a list is written as given, so a saved folder
        // loads back with the same config.
        let targets: Vec<&str> = if self.config.target_modules.iter().any(|target| target == ALL_LINEAR) {
            let mut seen = BTreeSet::new();
            self.layers
                .iter()
                .map(|layer| last_component(layer.module()))
                .filter(|name| seen.insert(*name))
                .collect()
        } else {
            self.config.target_modules.iter().map(String::as_str).collect()
        };
        // PEFT writes an integer alpha as an integer.
        let alpha = if self.config.alpha.fract() == 0.0 && self.config.alpha.abs() < 1e15 {
            serde_json::json!(self.config.alpha as i64)
        } else {
            serde_json::json!(self.config.alpha)
        };
        let config = serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": self.fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": alpha,
            "lora_dropout": self.config.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.config.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": false,
        });
        write_json(&config, &dir.join(CONFIG_FILE))?;
        save_varmap(&self.varmap, &dir.join(WEIGHTS_FILE))
    }

    /// Folds every adapter into its layer's dense weight (`W += scale · B · A`,
    /// transposed for `[in, out]` weights) and detaches it: the model then computes what
    /// it computed with the adapters on, at no extra cost, and saves as a plain
    /// checkpoint ([`Model::save_hf`]). Merges whether or not the adapters are switched
    /// on. The variables stay in [`LoraAdapters::varmap`] but no longer affect the model.
    pub fn merge(&self, model: &mut Model) -> Result<()> {
        let mut merged = 0;
        for (module, linear) in model.linear_layers_mut()? {
            let Some(layer) = linear.lora.clone() else {
                continue;
            };
            if !self.layers.iter().any(|ours| Arc::ptr_eq(ours, &layer)) {
                continue;
            }
            let update = (layer.b.detach().matmul(&layer.a.detach())? * layer.scale)?;
            let weight = match &linear.weight {
                Weight::Dense(weight) => Weight::Dense((weight.detach() + update)?.contiguous()?),
                Weight::DenseInOut(weight) => {
                    Weight::DenseInOut((weight.detach() + update.t()?)?.contiguous()?)
                }
                Weight::Quantized(_) | Weight::Packed(_) => {
                    return Err(ModelError::Config(format!(
                        "`{module}` is quantized and cannot take a merge"
                    )));
                }
            };
            linear.weight = weight;
            linear.lora = None;
            merged += 1;
        }
        if merged != self.layers.len() {
            return Err(ModelError::Config(format!(
                "merged {merged} of {} LoRA adapters: the model does not hold all of them (merged \
                 already, or attached to another model)",
                self.layers.len()
            )));
        }
        Ok(())
    }
}

/// Collects the adapters of one [`LoraAdapters`] as they are attached.
struct Builder {
    config: LoraConfig,
    fan_in_fan_out: bool,
    varmap: VarMap,
    layers: Vec<Arc<LoraLayer>>,
    switches: Arc<Switches>,
}

impl Builder {
    fn new(config: LoraConfig) -> Builder {
        Builder {
            config,
            fan_in_fan_out: false,
            varmap: VarMap::new(),
            layers: Vec::new(),
            switches: Arc::new(Switches {
                enabled: AtomicBool::new(true),
                training: AtomicBool::new(false),
                step_seed: AtomicU64::new(0),
            }),
        }
    }

    /// Registers `a` and `b` as variables and attaches them to `linear`.
    fn add(&mut self, module: &str, linear: &mut Linear, a: Tensor, b: Tensor) -> Result<()> {
        if linear.lora.is_some() {
            return Err(ModelError::Config(format!("`{module}` already carries a LoRA adapter")));
        }
        self.fan_in_fan_out |= matches!(linear.weight, Weight::DenseInOut(_));
        let a = register_var(&self.varmap, &format!("{PEFT_PREFIX}{module}.lora_A.weight"), a)?;
        let b = register_var(&self.varmap, &format!("{PEFT_PREFIX}{module}.lora_B.weight"), b)?;
        let layer = Arc::new(LoraLayer {
            module: module.to_string(),
            a,
            b,
            scale: self.config.scale(),
            dropout: self.config.dropout,
            index: self.layers.len() as u64,
            calls: AtomicU64::new(0),
            switches: self.switches.clone(),
        });
        linear.lora = Some(layer.clone());
        self.layers.push(layer);
        Ok(())
    }

    fn finish(self) -> LoraAdapters {
        LoraAdapters {
            config: self.config,
            fan_in_fan_out: self.fan_in_fan_out,
            varmap: self.varmap,
            layers: self.layers,
            switches: self.switches,
        }
    }
}

/// `adapter_config.json` as PEFT writes it: only the keys agora reads; the many others
/// are ignored unless they ask for something agora does not do (checked in `resolve`).
#[derive(Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    bias: Option<String>,
    #[serde(default)]
    rank_pattern: serde_json::Value,
    #[serde(default)]
    alpha_pattern: serde_json::Value,
    #[serde(default)]
    modules_to_save: serde_json::Value,
}

impl PeftConfig {
    fn resolve(self, path: &Path) -> Result<LoraConfig> {
        let unsupported =
            |what: &str| ModelError::file(path, format!("{what} is not supported by agora's LoRA"));
        if let Some(kind) = &self.peft_type
            && kind != "LORA"
        {
            return Err(ModelError::file(path, format!("peft_type `{kind}` is not LORA")));
        }
        if self.use_rslora {
            return Err(unsupported("use_rslora"));
        }
        if self.use_dora {
            return Err(unsupported("use_dora (DoRA)"));
        }
        if let Some(bias) = &self.bias
            && bias != "none"
        {
            return Err(unsupported(&format!("bias `{bias}`")));
        }
        let non_empty = |value: &serde_json::Value| match value {
            serde_json::Value::Null => false,
            serde_json::Value::Object(map) => !map.is_empty(),
            serde_json::Value::Array(list) => !list.is_empty(),
            _ => true,
        };
        if non_empty(&self.rank_pattern) || non_empty(&self.alpha_pattern) {
            return Err(unsupported("a per-module rank_pattern or alpha_pattern"));
        }
        if non_empty(&self.modules_to_save) {
            return Err(unsupported("modules_to_save"));
        }
        // A string is a regular expression over full names; the tensor names say which
        // layers are adapted, so it is kept only as a description.
        let target_modules = match self.target_modules {
            serde_json::Value::Array(list) => list
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ModelError::file(path, "`target_modules` holds something other than strings")
                })?,
            serde_json::Value::String(pattern) => vec![pattern],
            _ => vec![ALL_LINEAR.to_string()],
        };
        let config =
            LoraConfig { rank: self.r, alpha: self.lora_alpha, dropout: self.lora_dropout, target_modules };
        config.validate().map_err(|error| ModelError::file(path, error.to_string()))?;
        Ok(config)
    }
}

/// PEFT's rule for a list of target names: the full name, or a suffix after a dot.
fn matches_target(target: &str, module: &str) -> bool {
    module == target || module.strip_suffix(target).is_some_and(|head| head.ends_with('.'))
}

/// `(in_features, out_features)` of a layer that can take an adapter (dense f32).
fn dense_features(module: &str, linear: &Linear) -> Result<(usize, usize)> {
    linear.dense_weight().map_err(|error| ModelError::Config(format!("`{module}`: {error}")))?;
    linear.features()
}

fn last_component(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// The distinct last components of the model's linear layers, for error messages.
fn module_names(layers: &[(String, &mut Linear)]) -> String {
    let names: BTreeSet<&str> = layers.iter().map(|(module, _)| last_component(module)).collect();
    names.into_iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

/// The full names of the first block's layers (until a last component repeats), for
/// error messages.
fn example_names(layers: &[(String, &mut Linear)]) -> String {
    let mut seen = BTreeSet::new();
    layers
        .iter()
        .map(|(module, _)| module.as_str())
        .take_while(|module| seen.insert(last_component(module)))
        .map(|module| format!("`{module}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
