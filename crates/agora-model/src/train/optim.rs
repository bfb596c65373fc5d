//! The optimizer side of training: the trainable parameters in a fixed order, gradients
//! accumulated over micro-batches and clipped by their global norm, and AdamW with
//! exactly `torch.optim.AdamW`'s update, its state saved to and restored from
//! safetensors.
//!
//! Gradient buffers, AdamW's moments and the parameters are updated in place by small
//! CPU kernels (candle's in-place custom ops), split over rayon for large tensors: a
//! training step allocates no new parameter-sized tensors. Training runs on f32
//! parameters on the CPU; anything else is a clear error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, CustomOp1, DType, Device, InplaceOp1, InplaceOp2, Layout, Shape, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

use crate::fused::{cpu_values, cpu_values_mut};
use crate::{ModelError, Result};

/// Tensors longer than this are processed in chunks of this many elements in parallel;
/// shorter ones are not worth waking the thread pool for.
const PARALLEL_CHUNK: usize = 1 << 14;

/// The key of the step count in an AdamW state file (cannot clash with a parameter's
/// keys, which all end in `.exp_avg` or `.exp_avg_sq`).
const STEP_KEY: &str = "step";

/// The trainable variables of a model, sorted by name so that every run, checkpoint
/// and optimizer state sees them in the same order.
#[derive(Debug, Clone)]
pub struct Parameters {
    entries: Vec<(String, Var)>,
}

impl Parameters {
    /// Named variables in any order; names must be unique and at least one is needed.
    pub fn new(named: impl IntoIterator<Item = (String, Var)>) -> Result<Parameters> {
        let mut entries: Vec<(String, Var)> = named.into_iter().collect();
        if entries.is_empty() {
            return Err(ModelError::Config(
                "no trainable parameters (load the model with Trainable::Yes)".to_string(),
            ));
        }
        entries.sort_by(|left, right| left.0.cmp(&right.0));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(ModelError::Config(format!("trainable parameter {} is listed twice", pair[0].0)));
        }
        Ok(Parameters { entries })
    }

    /// Every variable of a `VarMap` (what `Trainable::Yes` fills), under its name.
    pub fn from_varmap(varmap: &VarMap) -> Result<Parameters> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| ModelError::Config("the variable map's lock is poisoned".to_string()))?;
        Parameters::new(data.iter().map(|(name, var)| (name.clone(), var.clone())))
    }

    /// Parameter names in order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// `(name, variable)` pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(name, var)| (name.as_str(), var))
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of trainable scalars.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|(_, var)| var.elem_count()).sum()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.position(name).and_then(|index| self.entries.get(index)).map(|(_, var)| var)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.binary_search_by(|(entry, _)| entry.as_str().cmp(name)).ok()
    }

    /// Whether `names` lists exactly these parameters in this order.
    fn matches(&self, names: &[String]) -> bool {
        self.entries.len() == names.len()
            && self.entries.iter().zip(names).all(|((name, _), other)| name == other)
    }
}

/// Gradient of one parameter summed over the micro-batches since the last clear.
#[derive(Debug)]
struct GradientSlot {
    /// Kept across clears, so that accumulation reuses the allocation.
    buffer: Option<Tensor>,
    /// Whether `buffer` holds a gradient of the current accumulation (false: zero).
    filled: bool,
    /// Whether some `accumulate` call since the last clear gave this parameter no gradient.
    missing: bool,
}

/// Gradients accumulated over micro-batches, one buffer per parameter, in the order of
/// the [`Parameters`] they were made for.
#[derive(Debug)]
pub struct Gradients {
    names: Vec<String>,
    slots: Vec<GradientSlot>,
}

impl Gradients {
    /// Empty (all-zero) gradients for these parameters; buffers are allocated lazily.
    pub fn new(params: &Parameters) -> Gradients {
        Gradients {
            names: params.entries.iter().map(|(name, _)| name.clone()).collect(),
            slots: params
                .entries
                .iter()
                .map(|_| GradientSlot { buffer: None, filled: false, missing: false })
                .collect(),
        }
    }

    /// Backpropagates the scalar `loss` and adds `scale * gradient` to each parameter's
    /// buffer (`scale` = 1 / micro-batches, or a token share, for accumulation).
    ///
    /// A parameter the loss does not reach counts as a zero gradient; its name shows up
    /// in [`Gradients::missing`], since that usually means an op without a backward
    /// pass cut it off.
    pub fn accumulate(&mut self, loss: &Tensor, params: &Parameters, scale: f64) -> Result<()> {
        if !params.matches(&self.names) {
            return Err(ModelError::Config(
                "gradients were made for a different set of parameters".to_string(),
            ));
        }
        if loss.elem_count() != 1 {
            return Err(ModelError::Config(format!(
                "the loss to backpropagate must be a scalar, got shape {:?}",
                loss.dims()
            )));
        }
        if !scale.is_finite() {
            return Err(ModelError::Config(format!("gradient scale {scale} is not finite")));
        }
        let store = loss.backward()?;
        for ((name, var), slot) in params.entries.iter().zip(&mut self.slots) {
            let Some(gradient) = store.get(var.as_tensor()) else {
                slot.missing = true;
                continue;
            };
            check_f32(name, "gradient", gradient)?;
            let gradient = gradient.contiguous()?;
            match (&slot.buffer, slot.filled) {
                (Some(buffer), filled) => {
                    buffer.inplace_op2(&gradient, &ScaledAdd { scale: scale as f32, keep: filled })?
                }
                (None, _) => slot.buffer = Some(gradient.affine(scale, 0.0)?.detach()),
            }
            slot.filled = true;
        }
        Ok(())
    }

    /// The accumulated gradient of a parameter, or `None` while it is zero (nothing
    /// accumulated for it since the last clear).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        let index = self.names.binary_search_by(|entry| entry.as_str().cmp(name)).ok()?;
        self.slots.get(index).and_then(|slot| if slot.filled { slot.buffer.as_ref() } else { None })
    }

    /// Parameters that some `accumulate` call since the last clear left without a
    /// gradient, in parameter order.
    pub fn missing(&self) -> Vec<String> {
        self.names
            .iter()
            .zip(&self.slots)
            .filter(|(_, slot)| slot.missing)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Global L2 norm over all accumulated gradients (summed in f64).
    pub fn norm(&self) -> Result<f64> {
        let mut sum_of_squares = 0.0;
        for buffer in self.filled_buffers() {
            let partial = buffer.apply_op1_no_bwd(&SumOfSquares)?;
            sum_of_squares += partial.to_scalar::<f64>()?;
        }
        Ok(sum_of_squares.sqrt())
    }

    /// Scales all gradients so that their global norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)` when
    /// below 1), and returns the norm before clipping. A non-finite norm is returned
    /// with the gradients left as they are: the caller should skip that step.
    pub fn clip_norm(&mut self, max_norm: f64) -> Result<f64> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(ModelError::Config(format!(
                "gradient clipping norm must be positive, got {max_norm}"
            )));
        }
        let norm = self.norm()?;
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            let factor = factor as f32;
            for buffer in self.filled_buffers() {
                buffer.inplace_op1(&Scale { factor })?;
            }
        }
        Ok(norm)
    }

    /// Zeroes every gradient and forgets missing parameters (buffers are kept for reuse).
    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.filled = false;
            slot.missing = false;
        }
    }

    fn filled_buffers(&self) -> impl Iterator<Item = &Tensor> {
        self.slots.iter().filter(|slot| slot.filled).filter_map(|slot| slot.buffer.as_ref())
    }
}

/// AdamW's settings besides the learning rate, which changes every step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Decoupled weight decay: each step first multiplies parameters by `1 - lr·wd`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW`'s defaults, except weight decay 0 (torch: 0.01), which is
    /// what TRL and transformers' `TrainingArguments` default to.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let betas_valid = (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2);
        if !betas_valid {
            return Err(ModelError::Config(format!(
                "AdamW betas must lie in [0, 1), got {} and {}",
                self.beta1, self.beta2
            )));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(ModelError::Config(format!("AdamW epsilon must be >= 0, got {}", self.epsilon)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ModelError::Config(format!(
                "AdamW weight decay must be >= 0, got {}",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// AdamW's running moments of one parameter, flat, in the parameter's element order.
#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

/// `torch.optim.AdamW` (single-tensor path, no amsgrad, no maximize) over a fixed set
/// of [`Parameters`].
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    shapes: Vec<Shape>,
    moments: Vec<Moments>,
    steps_taken: u64,
}

impl AdamW {
    /// Zero moments for every parameter (which must be f32 on the CPU).
    pub fn new(params: &Parameters, config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        for (name, var) in &params.entries {
            check_f32(name, "parameter", var.as_tensor())?;
            if !var.device().is_cpu() {
                return Err(ModelError::Config(format!(
                    "AdamW updates parameters on the CPU; {name} is on {:?}",
                    var.device()
                )));
            }
        }
        Ok(AdamW {
            config,
            names: params.entries.iter().map(|(name, _)| name.clone()).collect(),
            shapes: params.entries.iter().map(|(_, var)| var.shape().clone()).collect(),
            moments: params
                .entries
                .iter()
                .map(|(_, var)| Moments {
                    exp_avg: vec![0.0; var.elem_count()],
                    exp_avg_sq: vec![0.0; var.elem_count()],
                })
                .collect(),
            steps_taken: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken (restored by [`AdamW::load`]); the bias corrections use it.
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// One update of every parameter from the accumulated gradients, in place. A
    /// parameter without a gradient is updated with a zero gradient (its moments decay
    /// and weight decay applies), unlike torch, which skips parameters whose `.grad` is
    /// `None`.
    pub fn step(&mut self, params: &Parameters, gradients: &Gradients, learning_rate: f64) -> Result<()> {
        if !(learning_rate.is_finite() && learning_rate >= 0.0) {
            return Err(ModelError::Config(format!("learning rate must be >= 0, got {learning_rate}")));
        }
        if !params.matches(&self.names) || gradients.names != self.names {
            return Err(ModelError::Config(
                "AdamW was made for a different set of parameters than it is stepping".to_string(),
            ));
        }
        for ((name, var), shape) in params.entries.iter().zip(&self.shapes) {
            if var.shape() != shape {
                return Err(ModelError::Config(format!(
                    "parameter {name} changed shape from {shape:?} to {:?} since AdamW was made",
                    var.shape()
                )));
            }
        }
        let step = self.steps_taken + 1;
        let config = self.config;
        // The scalars are computed in f64 and used in f32, as torch does with Python floats.
        let bias_correction1 = 1.0 - config.beta1.powf(step as f64);
        let bias_correction2 = 1.0 - config.beta2.powf(step as f64);
        let update = AdamWUpdate {
            decay: (config.weight_decay != 0.0).then_some((1.0 - learning_rate * config.weight_decay) as f32),
            first_moment_weight: (1.0 - config.beta1) as f32,
            beta2: config.beta2 as f32,
            second_moment_weight: (1.0 - config.beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            epsilon: config.epsilon as f32,
            negative_step_size: (-learning_rate / bias_correction1) as f32,
        };
        for (((_, var), slot), moments) in params.entries.iter().zip(&gradients.slots).zip(&mut self.moments)
        {
            let kernel = AdamWKernel { update, moments: RefCell::new(moments) };
            match slot.buffer.as_ref().filter(|_| slot.filled) {
                Some(gradient) => var.as_tensor().inplace_op2(gradient, &kernel)?,
                None => var.as_tensor().inplace_op1(&kernel)?,
            }
        }
        self.steps_taken = step;
        Ok(())
    }

    /// Writes the moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) and the step count
    /// (`step`, i64) to a safetensors file, through a temporary file and a rename so
    /// that a crash never leaves half a state behind.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::with_capacity(2 * self.names.len() + 1);
        for ((name, shape), moments) in self.names.iter().zip(&self.shapes).zip(&self.moments) {
            let exp_avg = Tensor::from_slice(&moments.exp_avg, shape, &Device::Cpu)?;
            let exp_avg_sq = Tensor::from_slice(&moments.exp_avg_sq, shape, &Device::Cpu)?;
            tensors.insert(format!("{name}.exp_avg"), exp_avg);
            tensors.insert(format!("{name}.exp_avg_sq"), exp_avg_sq);
        }
        let steps = i64::try_from(self.steps_taken)
            .map_err(|_| ModelError::file(path, "step count does not fit in an i64"))?;
        tensors.insert(STEP_KEY.to_string(), Tensor::new(steps, &Device::Cpu)?);
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        candle_core::safetensors::save(&tensors, &partial)
            .map_err(|error| ModelError::file(&partial, format!("cannot write the AdamW state: {error}")))?;
        std::fs::rename(&partial, path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
    }

    /// Restores a state written by [`AdamW::save`] for the same parameters. The file
    /// must hold exactly the keys of these parameters with their shapes; otherwise
    /// nothing changes and the error names the first difference.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|error| ModelError::file(path, format!("cannot read the AdamW state: {error}")))?;
        let mismatch =
            |message: String| ModelError::file(path, format!("AdamW state does not match: {message}"));
        let steps = tensors
            .remove(STEP_KEY)
            .ok_or_else(|| mismatch(format!("no `{STEP_KEY}` entry")))?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let steps = match steps.as_slice() {
            [steps] => u64::try_from(*steps).map_err(|_| mismatch(format!("negative step count {steps}")))?,
            _ => return Err(mismatch(format!("`{STEP_KEY}` holds {} values, not one", steps.len()))),
        };
        let mut restored = Vec::with_capacity(self.names.len());
        for (name, shape) in self.names.iter().zip(&self.shapes) {
            let mut take = |suffix: &str| -> Result<Vec<f32>> {
                let key = format!("{name}.{suffix}");
                let tensor = tensors.remove(&key).ok_or_else(|| mismatch(format!("no `{key}` entry")))?;
                if tensor.shape() != shape || tensor.dtype() != DType::F32 {
                    return Err(mismatch(format!(
                        "`{key}` is {:?} {:?}, the parameter is F32 {shape:?}",
                        tensor.dtype(),
                        tensor.shape()
                    )));
                }
                Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
            };
            restored.push(Moments { exp_avg: take("exp_avg")?, exp_avg_sq: take("exp_avg_sq")? });
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(mismatch(format!(
                "`{extra}` belongs to no parameter ({} unknown entries)",
                tensors.len()
            )));
        }
        self.moments = restored;
        self.steps_taken = steps;
        Ok(())
    }
}

fn check_f32(name: &str, what: &str, tensor: &Tensor) -> Result<()> {
    if tensor.dtype() != DType::F32 {
        return Err(ModelError::Config(format!(
            "training works on f32 tensors; the {what} of {name} is {:?}",
            tensor.dtype()
        )));
    }
    Ok(())
}

fn check_lengths(kernel: &str, destination: usize, source: usize) -> candle_core::Result<()> {
    if destination != source {
        return Err(candle_core::Error::Msg(format!(
            "{kernel}: {destination} elements updated from {source}"
        )));
    }
    Ok(())
}

/// `destination = (keep ? destination : 0) + scale · source`.
struct ScaledAdd {
    scale: f32,
    keep: bool,
}

impl InplaceOp2 for ScaledAdd {
    fn name(&self) -> &'static str {
        "gradient-accumulate"
    }

    fn cpu_fwd(
        &self,
        destination: &mut CpuStorage,
        destination_layout: &Layout,
        source: &CpuStorage,
        source_layout: &Layout,
    ) -> candle_core::Result<()> {
        let destination = cpu_values_mut(self.name(), destination, destination_layout)?;
        let source = cpu_values(self.name(), source, source_layout)?;
        check_lengths(self.name(), destination.len(), source.len())?;
        let (scale, keep) = (self.scale, self.keep);
        let kernel = |destination: &mut [f32], source: &[f32]| {
            for (value, &addend) in destination.iter_mut().zip(source) {
                *value = if keep { *value + scale * addend } else { scale * addend };
            }
        };
        if destination.len() > PARALLEL_CHUNK {
            destination
                .par_chunks_mut(PARALLEL_CHUNK)
                .zip(source.par_chunks(PARALLEL_CHUNK))
                .for_each(|(destination, source)| kernel(destination, source));
        } else {
            kernel(destination, source);
        }
        Ok(())
    }
}

/// `destination *= factor`.
struct Scale {
    factor: f32,
}

impl InplaceOp1 for Scale {
    fn name(&self) -> &'static str {
        "gradient-scale"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let values = cpu_values_mut(self.name(), storage, layout)?;
        let factor = self.factor;
        if values.len() > PARALLEL_CHUNK {
            values
                .par_chunks_mut(PARALLEL_CHUNK)
                .for_each(|chunk| chunk.iter_mut().for_each(|value| *value *= factor));
        } else {
            values.iter_mut().for_each(|value| *value *= factor);
        }
        Ok(())
    }
}

/// Sum of squares of a tensor's elements, accumulated in f64: a scalar f64 tensor.
struct SumOfSquares;

impl CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "sum-of-squares"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), storage, layout)?;
        // Eight independent f64 lanes: a single running sum is one long dependency chain
        // that the compiler may not vectorise.
        let square_sum = |chunk: &[f32]| {
            let mut lanes = [0f64; 8];
            let mut groups = chunk.chunks_exact(8);
            for group in &mut groups {
                for (lane, &value) in lanes.iter_mut().zip(group) {
                    *lane += f64::from(value) * f64::from(value);
                }
            }
            let rest: f64 = groups.remainder().iter().map(|&value| f64::from(value) * f64::from(value)).sum();
            lanes.iter().sum::<f64>() + rest
        };
        let total = if values.len() > PARALLEL_CHUNK {
            values.par_chunks(PARALLEL_CHUNK).map(square_sum).sum()
        } else {
            square_sum(values)
        };
        Ok((CpuStorage::F64(vec![total]), Shape::from(())))
    }
}

/// The per-step scalars of torch's AdamW update, already in f32.
#[derive(Debug, Clone, Copy)]
struct AdamWUpdate {
    /// `1 - lr·wd`, or `None` without weight decay (torch skips the multiplication).
    decay: Option<f32>,
    first_moment_weight: f32,
    beta2: f32,
    second_moment_weight: f32,
    bias_correction2_sqrt: f32,
    epsilon: f32,
    negative_step_size: f32,
}

impl AdamWUpdate {
    /// torch's `_single_tensor_adam` for one chunk, operation by operation and in the
    /// same order, so that f32 rounding matches; no gradient means a zero gradient.
    fn apply(
        &self,
        parameters: &mut [f32],
        gradients: Option<&[f32]>,
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
    ) {
        let moments = exp_avg.iter_mut().zip(exp_avg_sq.iter_mut());
        match gradients {
            Some(gradients) => {
                for ((parameter, &gradient), (first, second)) in
                    parameters.iter_mut().zip(gradients).zip(moments)
                {
                    self.element(parameter, gradient, first, second);
                }
            }
            None => {
                for (parameter, (first, second)) in parameters.iter_mut().zip(moments) {
                    self.element(parameter, 0.0, first, second);
                }
            }
        }
    }

    #[inline(always)]
    fn element(&self, parameter: &mut f32, gradient: f32, first: &mut f32, second: &mut f32) {
        if let Some(decay) = self.decay {
            *parameter *= decay;
        }
        // exp_avg.lerp_(grad, 1 - beta1): torch's lerp for weights below 0.5.
        *first += self.first_moment_weight * (gradient - *first);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        *second = *second * self.beta2 + self.second_moment_weight * gradient * gradient;
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let denominator = second.sqrt() / self.bias_correction2_sqrt + self.epsilon;
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        *parameter += self.negative_step_size * *first / denominator;
    }
}

/// AdamW on one parameter: the parameter is the in-place destination, the gradient (if
/// any) the source, the moments ride along.
struct AdamWKernel<'a> {
    update: AdamWUpdate,
    moments: RefCell<&'a mut Moments>,
}

impl AdamWKernel<'_> {
    fn run(&self, parameters: &mut [f32], gradients: Option<&[f32]>) -> candle_core::Result<()> {
        let mut moments = self.moments.borrow_mut();
        let Moments { exp_avg, exp_avg_sq } = &mut **moments;
        check_lengths("adamw", parameters.len(), exp_avg.len())?;
        if let Some(gradients) = gradients {
            check_lengths("adamw", parameters.len(), gradients.len())?;
        }
        let update = self.update;
        if parameters.len() > PARALLEL_CHUNK {
            let gradient_chunks: Vec<Option<&[f32]>> = match gradients {
                Some(gradients) => gradients.chunks(PARALLEL_CHUNK).map(Some).collect(),
                None => vec![None; parameters.len().div_ceil(PARALLEL_CHUNK)],
            };
            parameters
                .par_chunks_mut(PARALLEL_CHUNK)
                .zip(gradient_chunks)
                .zip(exp_avg.par_chunks_mut(PARALLEL_CHUNK))
                .zip(exp_avg_sq.par_chunks_mut(PARALLEL_CHUNK))
                .for_each(|(((parameters, gradients), first), second)| {
                    update.apply(parameters, gradients, first, second)
                });
        } else {
            update.apply(parameters, gradients, exp_avg, exp_avg_sq);
        }
        Ok(())
    }
}

impl InplaceOp1 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.run(cpu_values_mut(InplaceOp1::name(self), storage, layout)?, None)
    }
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        parameter: &mut CpuStorage,
        parameter_layout: &Layout,
        gradient: &CpuStorage,
        gradient_layout: &Layout,
    ) -> candle_core::Result<()> {
        let gradient = cpu_values(InplaceOp2::name(self), gradient, gradient_layout)?;
        self.run(cpu_values_mut(InplaceOp2::name(self), parameter, parameter_layout)?, Some(gradient))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32]) -> Var {
        Var::new(values, &Device::Cpu).unwrap()
    }

    fn values(tensor: &Tensor) -> Vec<f32> {
        tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Parameters `a` (3 values) and `b` (2 values, or `b_length`), and a loss that
    /// reaches only `a`: `sum(a · weights)`.
    fn setup(b_length: usize) -> (Parameters, Var, Var) {
        let a = var(&[1.0, -2.0, 3.0]);
        let b = var(&vec![0.5; b_length]);
        let params = Parameters::new([("b".to_string(), b.clone()), ("a".to_string(), a.clone())]).unwrap();
        (params, a, b)
    }

    fn linear_loss(a: &Var, weights: &[f32]) -> Tensor {
        let weights = Tensor::new(weights, &Device::Cpu).unwrap();
        (a.as_tensor() * weights).unwrap().sum_all().unwrap()
    }

    #[test]
    fn parameters_are_sorted_unique_and_counted() {
        let (params, _, _) = setup(2);
        assert_eq!(params.names(), ["a", "b"]);
        assert_eq!((params.len(), params.count()), (2, 5));
        assert_eq!(params.get("b").unwrap().elem_count(), 2);
        assert!(params.get("c").is_none());
        let twice = Parameters::new([("x".to_string(), var(&[1.0])), ("x".to_string(), var(&[2.0]))]);
        assert!(twice.unwrap_err().to_string().contains("x is listed twice"));
        assert!(Parameters::from_varmap(&VarMap::new()).is_err());
    }

    #[test]
    fn gradients_accumulate_scaled_and_report_missing_parameters() {
        let (params, a, _) = setup(2);
        let mut gradients = Gradients::new(&params);
        gradients.accumulate(&linear_loss(&a, &[1.0, 2.0, 3.0]), &params, 0.5).unwrap();
        gradients.accumulate(&linear_loss(&a, &[3.0, 2.0, 1.0]), &params, 0.5).unwrap();
        assert_eq!(values(gradients.get("a").unwrap()), [2.0, 2.0, 2.0]);
        assert!(gradients.get("b").is_none());
        assert_eq!(gradients.missing(), ["b"]);
        assert!((gradients.norm().unwrap() - 12f64.sqrt()).abs() < 1e-12);

        // After a clear the buffer is reused and overwritten, not added to.
        gradients.clear();
        assert!(gradients.missing().is_empty());
        assert_eq!(gradients.norm().unwrap(), 0.0);
        gradients.accumulate(&linear_loss(&a, &[1.0, 0.0, -1.0]), &params, 2.0).unwrap();
        assert_eq!(values(gradients.get("a").unwrap()), [2.0, 0.0, -2.0]);
    }

    #[test]
    fn clip_returns_the_norm_before_clipping_and_scales_like_torch() {
        let (params, a, _) = setup(2);
        let mut gradients = Gradients::new(&params);
        gradients.accumulate(&linear_loss(&a, &[3.0, 0.0, 4.0]), &params, 1.0).unwrap();
        assert_eq!(gradients.clip_norm(10.0).unwrap(), 5.0);
        assert_eq!(values(gradients.get("a").unwrap()), [3.0, 0.0, 4.0]);
        let before = gradients.clip_norm(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-12);
        let factor = (1.0 / (5.0 + 1e-6)) as f32;
        assert_eq!(values(gradients.get("a").unwrap()), [3.0 * factor, 0.0, 4.0 * factor]);
        assert!((gradients.norm().unwrap() - 1.0).abs() < 1e-6);
        assert!(gradients.clip_norm(0.0).is_err());
    }

    #[test]
    fn large_tensors_take_the_parallel_path_with_the_same_result() {
        let length = 3 * PARALLEL_CHUNK + 17;
        let initial: Vec<f32> = (0..length).map(|index| (index as f32 * 0.37).sin()).collect();
        let weights: Vec<f32> = (0..length).map(|index| (index as f32 * 0.11).cos()).collect();
        let mut results = Vec::new();
        for chunked in [false, true] {
            let parameter = Var::new(initial.as_slice(), &Device::Cpu).unwrap();
            let params = Parameters::new([("p".to_string(), parameter.clone())]).unwrap();
            let mut gradients = Gradients::new(&params);
            let loss = linear_loss(&parameter, &weights);
            gradients.accumulate(&loss, &params, 1.0).unwrap();
            let config = AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() };
            if chunked {
                let mut optimizer = AdamW::new(&params, config).unwrap();
                optimizer.step(&params, &gradients, 1e-3).unwrap();
            } else {
                // The same update, one element at a time.
                let update = AdamWUpdate {
                    decay: Some((1.0 - 1e-3 * 0.01) as f32),
                    first_moment_weight: (1.0 - 0.9f64) as f32,
                    beta2: 0.999,
                    second_moment_weight: (1.0 - 0.999f64) as f32,
                    bias_correction2_sqrt: (1.0 - 0.999f64).sqrt() as f32,
                    epsilon: 1e-8,
                    negative_step_size: (-1e-3 / (1.0 - 0.9)) as f32,
                };
                let mut values = initial.clone();
                let (mut first, mut second) = (vec![0.0; length], vec![0.0; length]);
                for index in 0..length {
                    update.element(&mut values[index], weights[index], &mut first[index], &mut second[index]);
                }
                parameter.set(&Tensor::new(values.as_slice(), &Device::Cpu).unwrap()).unwrap();
            }
            results.push(values(parameter.as_tensor()));
        }
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn a_parameter_without_gradient_still_decays() {
        let (params, a, b) = setup(2);
        let mut gradients = Gradients::new(&params);
        gradients.accumulate(&linear_loss(&a, &[1.0, 1.0, 1.0]), &params, 1.0).unwrap();
        let config = AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() };
        let mut optimizer = AdamW::new(&params, config).unwrap();
        optimizer.step(&params, &gradients, 0.1).unwrap();
        assert_eq!(optimizer.steps_taken(), 1);
        assert_eq!(values(b.as_tensor()), [0.5 * 0.95; 2]);
        // Adam's first step moves every parameter by about -lr·sign(gradient).
        let moved: Vec<f32> = values(a.as_tensor());
        for (after, before) in moved.iter().zip([1.0f32, -2.0, 3.0]) {
            assert!((after - (before * 0.95 - 0.1)).abs() < 1e-6, "{after} from {before}");
        }
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("optimizer.safetensors");
        let mut trajectories = Vec::new();
        for resume in [false, true] {
            let (params, a, _) = setup(2);
            let mut gradients = Gradients::new(&params);
            let mut optimizer = AdamW::new(&params, AdamWConfig::default()).unwrap();
            for (step, weights) in [[1.0, -1.0, 0.5], [0.2, 0.3, -4.0], [1.0, 1.0, 1.0]].iter().enumerate() {
                if resume && step == 2 {
                    optimizer.save(&path).unwrap();
                    optimizer = AdamW::new(&params, AdamWConfig::default()).unwrap();
                    optimizer.load(&path).unwrap();
                    assert_eq!(optimizer.steps_taken(), 2);
                }
                gradients.clear();
                gradients.accumulate(&linear_loss(&a, weights), &params, 1.0).unwrap();
                optimizer.step(&params, &gradients, 0.01).unwrap();
            }
            trajectories.push(values(a.as_tensor()));
        }
        assert_eq!(trajectories[0], trajectories[1]);
        assert!(!path.with_extension("safetensors.partial").exists());
    }

    #[test]
    fn a_state_file_of_other_parameters_is_rejected_untouched() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("optimizer.safetensors");
        let (params, a, _) = setup(2);
        let mut gradients = Gradients::new(&params);
        gradients.accumulate(&linear_loss(&a, &[1.0, 2.0, 3.0]), &params, 1.0).unwrap();
        let mut optimizer = AdamW::new(&params, AdamWConfig::default()).unwrap();
        optimizer.step(&params, &gradients, 0.01).unwrap();
        optimizer.save(&path).unwrap();

        let (other_shape, _, _) = setup(5);
        let mut other = AdamW::new(&other_shape, AdamWConfig::default()).unwrap();
        let error = other.load(&path).unwrap_err().to_string();
        assert!(error.contains("optimizer.safetensors") && error.contains("`b.exp_avg`"), "{error}");
        assert_eq!(other.steps_taken(), 0);

        let fewer = Parameters::new([("a".to_string(), var(&[0.0, 0.0, 0.0]))]).unwrap();
        let error = AdamW::new(&fewer, AdamWConfig::default()).unwrap().load(&path).unwrap_err().to_string();
        assert!(error.contains("belongs to no parameter"), "{error}");

        let renamed =
            Parameters::new([("a".to_string(), var(&[0.0; 3])), ("c".to_string(), var(&[0.0; 2]))]).unwrap();
        let error =
            AdamW::new(&renamed, AdamWConfig::default()).unwrap().load(&path).unwrap_err().to_string();
        assert!(error.contains("no `c.exp_avg` entry"), "{error}");

        assert!(optimizer.load(&directory.path().join("absent.safetensors")).is_err());
    }

    #[test]
    fn stepping_other_parameters_is_an_error() {
        let (params, _, _) = setup(2);
        let (other, _, _) = setup(2);
        let only_a = Parameters::new([("a".to_string(), var(&[0.0; 3]))]).unwrap();
        let mut optimizer = AdamW::new(&params, AdamWConfig::default()).unwrap();
        assert!(optimizer.step(&only_a, &Gradients::new(&only_a), 0.1).is_err());
        // Same names and shapes: fine (a rebuilt model after loading a checkpoint).
        optimizer.step(&other, &Gradients::new(&other), 0.1).unwrap();
        assert!(optimizer.step(&params, &Gradients::new(&params), f64::NAN).is_err());
        let half =
            Parameters::new([("h".to_string(), Var::zeros(2, DType::F16, &Device::Cpu).unwrap())]).unwrap();
        assert!(AdamW::new(&half, AdamWConfig::default()).unwrap_err().to_string().contains("f32"));
    }
}
