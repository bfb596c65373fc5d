//! The training loop: seeded epochs of shuffled batches, gradient accumulation and
//! clipping, AdamW under a learning-rate schedule, evaluation, sample generations,
//! checkpoints, early stopping, and resuming from the last checkpoint so that a killed
//! run ends exactly where an uninterrupted one would.
//!
//! Determinism: the order of epoch `e` is a SplitMix64 shuffle seeded by `(seed, e)`, the
//! LoRA dropout masks of each forward pass are seeded by `(seed, step, micro-batch)`, and
//! everything else is a pure function of the weights and optimizer state a checkpoint
//! holds. Resuming from step `n` therefore repeats steps `n+1..` bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_core::{SplitMix64, mix64};
use agora_model::engine::on_pool;
use agora_model::scoring::ScoringBatch;
use agora_model::train::loss::{DpoMetrics, dpo_loss, sft_loss};
use agora_model::train::optim::{AdamW, AdamWConfig, Gradients, Parameters};
use agora_model::{Device, LanguageModel, Tensor};
use serde_json::{Map, Value};

use crate::config::{Method, TrainConfig};
use crate::data::{LoadReport, PreferencePair, TokenizedExample};
use crate::error::{Result, TrainError};
use crate::model::{TrainModel, load_frozen, tensor};
use crate::reference::{self, ReferenceLogps};
use crate::run::{RunDir, RunSummary, TrainerState};
use crate::schedule::Schedule;

/// Training or evaluation examples, tokenized.
#[derive(Debug, Clone)]
pub enum Dataset {
    Sft(Vec<TokenizedExample>),
    Preferences(Vec<PreferencePair>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Dataset::Sft(examples) => examples.len(),
            Dataset::Preferences(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct TrainData {
    pub train: Dataset,
    pub eval: Option<Dataset>,
    /// What loading each file read, kept and skipped (printed and stored with the run).
    pub reports: Vec<LoadReport>,
}

/// Hears what the loop does (the command line draws a progress bar from it).
pub trait Observer {
    fn started(&mut self, _total_steps: usize, _first_step: usize) {}
    fn step(&mut self, _step: usize, _record: &Map<String, Value>) {}
    fn message(&mut self, _text: &str) {}
}

/// An observer that hears nothing.
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Where reference log-probabilities are cached (shared by the runs of a sweep).
    pub reference_cache: PathBuf,
    /// Checkpoints kept (the newest).
    pub keep_checkpoints: usize,
    /// Stops (as a crash would) once this many optimizer steps are done, without
    /// writing the final checkpoint: for tests of resuming.
    pub halt_after_step: Option<usize>,
}

impl TrainOptions {
    pub fn new(reference_cache: PathBuf) -> TrainOptions {
        TrainOptions { reference_cache, keep_checkpoints: 2, halt_after_step: None }
    }
}

/// One optimizer step's micro-batches: indices into the training set.
type Group = Vec<Vec<usize>>;

/// Runs (or resumes) the training described by `config` in `run`. `model` must have been
/// loaded for `config` ([`crate::model::load_model`]); `data` tokenized with its tokenizer.
pub fn train(
    config: &TrainConfig,
    model: &mut TrainModel,
    data: &TrainData,
    run: &RunDir,
    options: &TrainOptions,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    let started = Instant::now();
    check_data(config, data)?;
    let params = model.parameters()?;
    let mut optimizer = adamw(config, &params)?;
    let epoch_groups = |epoch: usize| groups(config, data.train.len(), epoch);
    let steps_per_epoch = epoch_groups(0).len();
    // As in transformers' Trainer, `max_steps` wins over `epochs`: training goes on over
    // as many epochs as it takes.
    let total_steps = config.training.max_steps.unwrap_or(steps_per_epoch * config.training.epochs);
    let epochs = total_steps.div_ceil(steps_per_epoch.max(1));
    let schedule = Schedule::new(&config.schedule, config.optimizer.learning_rate, total_steps);

    let data_hash = data_hash(&data.train);
    let checkpoint = run.last_checkpoint()?;
    let mut state = match &checkpoint {
        Some((_, dir)) => {
            let state = RunDir::read_state(dir)?;
            if !state.data_hash.is_empty() && state.data_hash != data_hash {
                return Err(TrainError::Config {
                    file: config.data.train.clone(),
                    message: format!(
                        "the training data changed since run {} started; a run resumes only on its own data \
                         (start a new run instead)",
                        run.id
                    ),
                });
            }
            model.load_weights(dir)?;
            optimizer.load(&dir.join(OPTIMIZER_FILE))?;
            state
        }
        None => TrainerState {
            step: 0,
            epoch: 0,
            batches_done_in_epoch: 0,
            best_eval_loss: None,
            evals_without_improvement: 0,
            total_steps,
            data_hash,
        },
    };
    let mut logs = run.open_logs(checkpoint.as_ref().map(|(step, _)| *step))?;
    observer.started(total_steps, state.step);

    let references = match (&data.train, config.method) {
        (Dataset::Preferences(pairs), Method::Dpo) => {
            let train = reference_logps(config, model, pairs, options, observer)?;
            let eval = match &data.eval {
                Some(Dataset::Preferences(eval_pairs)) => {
                    Some(reference_logps(config, model, eval_pairs, options, observer)?)
                }
                _ => None,
            };
            Some((train, eval))
        }
        _ => None,
    };
    let evaluation = Evaluation { config, data, references: references.as_ref() };

    if checkpoint.is_none() {
        for record in sample_records(config, model, 0, "reference")? {
            logs.sample(&record)?;
        }
        if let Some(record) = evaluation.run(model, 0, &mut state)? {
            logs.metric(&record)?;
            observer.step(0, &record);
        }
    }

    let mut gradients = Gradients::new(&params);
    let mut trained_tokens: u64 = 0;
    let mut last_train_loss = None;
    let mut last_eval_loss = None;
    let mut status = "finished";
    let mut halted = false;
    'epochs: while state.epoch < epochs && state.step < total_steps {
        let groups = epoch_groups(state.epoch);
        let batches_in_epoch: usize = groups.iter().map(Vec::len).sum();
        let mut batches_done = 0;
        for group in &groups {
            if batches_done < state.batches_done_in_epoch {
                batches_done += group.len();
                continue;
            }
            let step_started = Instant::now();
            let step = state.step;
            let learning_rate = schedule.learning_rate(step);
            let reference = references.as_ref().map(|(train, _)| train);
            let (outcome, grad_norm) = optimizer_step(
                config,
                model,
                (&params, &mut gradients, &mut optimizer),
                (&data.train, reference),
                group,
                step,
                learning_rate,
            )?;
            state.step += 1;
            batches_done += group.len();
            state.batches_done_in_epoch = batches_done;
            trained_tokens += outcome.tokens as u64;
            last_train_loss = Some(outcome.loss);

            let seconds = step_started.elapsed().as_secs_f64();
            let mut record = Map::new();
            record.insert("step".to_string(), state.step.into());
            record.insert(
                "epoch".to_string(),
                number(state.epoch as f64 + batches_done as f64 / batches_in_epoch as f64),
            );
            record.insert("loss".to_string(), number(outcome.loss));
            for (name, value) in outcome.metrics {
                record.insert(name, number(value));
            }
            record.insert("learning_rate".to_string(), number(learning_rate));
            record.insert("grad_norm".to_string(), number(grad_norm));
            record.insert("tokens".to_string(), outcome.tokens.into());
            record.insert("tokens_per_second".to_string(), number(outcome.tokens as f64 / seconds.max(1e-9)));
            logs.metric(&record)?;
            observer.step(state.step, &record);

            let epoch_ends = batches_done == batches_in_epoch;
            let last_step = state.step >= total_steps;
            let eval_due = config.training.eval_every.is_some_and(|every| state.step.is_multiple_of(every));
            let mut stop_early = false;
            let evaluated = if eval_due || epoch_ends || last_step {
                evaluation.run(model, state.step, &mut state)?
            } else {
                None
            };
            if let Some(record) = evaluated {
                last_eval_loss = record.get("eval/loss").and_then(Value::as_f64);
                logs.metric(&record)?;
                observer.step(state.step, &record);
                stop_early = config
                    .training
                    .early_stopping_patience
                    .is_some_and(|patience| state.evals_without_improvement >= patience);
            }
            if epoch_ends || last_step || stop_early {
                for record in sample_records(config, model, state.step, "policy")? {
                    logs.sample(&record)?;
                }
            }
            if epoch_ends {
                state.epoch += 1;
                state.batches_done_in_epoch = 0;
            }
            let save_due = config.training.save_every.is_some_and(|every| state.step.is_multiple_of(every));
            if save_due || last_step || stop_early {
                save_checkpoint(config, model, &optimizer, run, &state, options.keep_checkpoints)?;
            }
            if options.halt_after_step.is_some_and(|halt| state.step >= halt) && !last_step {
                halted = true;
                break 'epochs;
            }
            if stop_early {
                observer.message(&format!(
                    "early stop at step {}: the eval loss has not improved for {} evaluations",
                    state.step, state.evals_without_improvement
                ));
                status = "early-stopped";
                break 'epochs;
            }
            if last_step {
                break 'epochs;
            }
        }
    }
    if halted {
        status = "halted";
    } else {
        model.save_final(&run.path.join("final"), &config.model, false)?;
    }
    run.write_metrics_csv()?;
    let last_metrics = run.read_metrics()?.into_iter().fold(Map::new(), |mut last, record| {
        last.extend(record);
        last
    });
    let summary = RunSummary {
        id: run.id.clone(),
        method: config.method.name().to_string(),
        model: config.model.clone(),
        status: status.to_string(),
        steps: state.step,
        total_steps,
        final_train_loss: last_train_loss,
        final_eval_loss: last_eval_loss,
        best_eval_loss: state.best_eval_loss,
        trained_tokens,
        seconds: started.elapsed().as_secs_f64(),
        last_metrics,
    };
    run.write_summary(&summary)?;
    Ok(summary)
}

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

fn adamw(config: &TrainConfig, params: &Parameters) -> Result<AdamW> {
    let optimizer = &config.optimizer;
    Ok(AdamW::new(
        params,
        AdamWConfig {
            beta1: optimizer.beta1,
            beta2: optimizer.beta2,
            epsilon: optimizer.epsilon,
            weight_decay: optimizer.weight_decay,
        },
    )?)
}

fn check_data(config: &TrainConfig, data: &TrainData) -> Result<()> {
    let expected = match config.method {
        Method::Sft => "SFT examples",
        Method::Dpo => "preference pairs",
    };
    let matches = |dataset: &Dataset| {
        matches!(
            (config.method, dataset),
            (Method::Sft, Dataset::Sft(_)) | (Method::Dpo, Dataset::Preferences(_))
        )
    };
    if !matches(&data.train) || data.eval.as_ref().is_some_and(|eval| !matches(eval)) {
        return Err(TrainError::Config {
            file: config.data.train.clone(),
            message: format!("method {} trains on {expected}", config.method.name()),
        });
    }
    if data.train.is_empty() {
        return Err(TrainError::Config {
            file: config.data.train.clone(),
            message: "no training examples are left after loading".to_string(),
        });
    }
    Ok(())
}

/// SHA-256 over every token of the training set, in order.
fn data_hash(dataset: &Dataset) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut part = |tokens: &[u32]| {
        hasher.update((tokens.len() as u64).to_le_bytes());
        tokens.iter().for_each(|token| hasher.update(token.to_le_bytes()));
    };
    match dataset {
        Dataset::Sft(examples) => examples.iter().for_each(|example| {
            part(&example.tokens);
            let targets: Vec<u32> = example.targets.iter().map(|target| u32::from(*target)).collect();
            part(&targets);
        }),
        Dataset::Preferences(pairs) => pairs.iter().for_each(|pair| {
            part(&pair.prompt);
            part(&pair.chosen);
            part(&pair.rejected);
        }),
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The micro-batches of epoch `epoch`, grouped by optimizer step. The last group of an
/// epoch may hold fewer micro-batches (and its last micro-batch fewer examples).
fn groups(config: &TrainConfig, examples: usize, epoch: usize) -> Vec<Group> {
    let mut order: Vec<usize> = (0..examples).collect();
    SplitMix64::new(mix64(config.seed ^ mix64(epoch as u64 + 1))).shuffle(&mut order);
    let batches: Vec<Vec<usize>> = order.chunks(config.training.batch_size).map(<[usize]>::to_vec).collect();
    batches.chunks(config.training.gradient_accumulation_steps).map(<[Vec<usize>]>::to_vec).collect()
}

/// The dropout seed of micro-batch `micro` of optimizer step `step`.
fn forward_seed(config: &TrainConfig, step: usize, micro: usize) -> u64 {
    mix64(config.seed ^ mix64((step as u64) << 16 | micro as u64))
}

struct StepOutcome {
    loss: f64,
    tokens: usize,
    metrics: Vec<(String, f64)>,
}

fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn scalar(tensor_value: &Tensor) -> Result<f64> {
    Ok(f64::from(tensor(tensor_value.to_scalar::<f32>())?))
}

fn sft_batch(model: &TrainModel, examples: &[TokenizedExample], indices: &[usize]) -> Result<ScoringBatch> {
    let rows: Vec<Vec<u32>> = indices.iter().map(|&index| examples[index].tokens.clone()).collect();
    let targets: Vec<Vec<bool>> = indices.iter().map(|&index| examples[index].targets.clone()).collect();
    Ok(ScoringBatch::from_targets(&rows, &targets, model.model.device())?)
}

/// One optimizer step on `group`: forward and backward of each micro-batch, gradient
/// clipping (when configured), AdamW. Returns the step's outcome and the gradient norm
/// before clipping. Runs on the compute pool ([`agora_model::engine::on_pool`]).
fn optimizer_step(
    config: &TrainConfig,
    model: &TrainModel,
    (params, gradients, optimizer): (&Parameters, &mut Gradients, &mut AdamW),
    (train, reference): (&Dataset, Option<&ReferenceLogps>),
    group: &Group,
    step: usize,
    learning_rate: f64,
) -> Result<(StepOutcome, f64)> {
    on_pool(|| {
        let outcome = match (train, reference) {
            (Dataset::Sft(examples), _) => sft_step(config, model, params, gradients, examples, group, step)?,
            (Dataset::Preferences(pairs), Some(reference)) => {
                dpo_step(config, model, params, gradients, pairs, reference, group, step)?
            }
            (Dataset::Preferences(_), None) => {
                return Err(TrainError::Other("preference data needs method dpo".to_string()));
            }
        };
        let grad_norm = match config.optimizer.max_grad_norm.filter(|max| *max > 0.0) {
            Some(max) => gradients.clip_norm(max)?,
            None => gradients.norm()?,
        };
        optimizer.step(params, gradients, learning_rate)?;
        Ok((outcome, grad_norm))
    })
}

/// Mean loss over every target token of the group: each micro-batch's mean is weighted
/// by its share of the group's target tokens (the same gradient as one large batch).
fn sft_step(
    config: &TrainConfig,
    model: &TrainModel,
    params: &Parameters,
    gradients: &mut Gradients,
    examples: &[TokenizedExample],
    group: &Group,
    step: usize,
) -> Result<StepOutcome> {
    let target_count = |indices: &[usize]| -> usize {
        indices.iter().map(|&index| examples[index].targets.iter().filter(|target| **target).count()).sum()
    };
    let group_targets: usize = group.iter().map(|indices| target_count(indices)).sum();
    gradients.clear();
    let mut loss_sum = 0.0;
    let mut tokens = 0;
    for (micro, indices) in group.iter().enumerate() {
        model.set_training(true, forward_seed(config, step, micro));
        let batch = sft_batch(model, examples, indices)?;
        let loss = sft_loss(&batch, &model.model.target_logprobs(&batch)?)?;
        let share = target_count(indices) as f64 / group_targets.max(1) as f64;
        loss_sum += scalar(&loss)? * share;
        gradients.accumulate(&loss, params, share)?;
        tokens += indices.iter().map(|&index| examples[index].tokens.len()).sum::<usize>();
    }
    model.set_training(false, 0);
    let metrics = vec![("ppl".to_string(), loss_sum.exp())];
    Ok(StepOutcome { loss: loss_sum, tokens, metrics })
}

#[allow(clippy::too_many_arguments)]
fn dpo_step(
    config: &TrainConfig,
    model: &TrainModel,
    params: &Parameters,
    gradients: &mut Gradients,
    pairs: &[PreferencePair],
    reference: &ReferenceLogps,
    group: &Group,
    step: usize,
) -> Result<StepOutcome> {
    let group_pairs: usize = group.iter().map(Vec::len).sum();
    gradients.clear();
    let mut accumulated = DpoAccumulator::default();
    let mut tokens = 0;
    for (micro, indices) in group.iter().enumerate() {
        model.set_training(true, forward_seed(config, step, micro));
        let chosen: Vec<&PreferencePair> = indices.iter().map(|&index| &pairs[index]).collect();
        let (policy_chosen, policy_rejected) = reference::pair_logps(&model.model, &chosen)?;
        let output = dpo_micro_batch(config, model, &policy_chosen, &policy_rejected, reference, indices)?;
        let share = indices.len() as f64 / group_pairs.max(1) as f64;
        gradients.accumulate(&output.loss, params, share)?;
        accumulated.add(&output, share, &policy_chosen, reference, indices)?;
        tokens += chosen
            .iter()
            .map(|pair| 2 * pair.prompt.len() + pair.chosen.len() + pair.rejected.len())
            .sum::<usize>();
    }
    model.set_training(false, 0);
    Ok(StepOutcome { loss: accumulated.loss, tokens, metrics: accumulated.metrics() })
}

struct DpoBatchOutput {
    loss: Tensor,
    loss_value: f64,
    metrics: DpoMetrics,
}

fn dpo_micro_batch(
    config: &TrainConfig,
    model: &TrainModel,
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference: &ReferenceLogps,
    indices: &[usize],
) -> Result<DpoBatchOutput> {
    let loss_config = config.dpo.loss_config();
    let device = model.model.device();
    let pick = |values: &[f32]| -> Vec<f32> { indices.iter().map(|&index| values[index]).collect() };
    let mut reference_chosen = pick(&reference.chosen);
    let mut reference_rejected = pick(&reference.rejected);
    let (mut policy_chosen, mut policy_rejected) = (policy_chosen.clone(), policy_rejected.clone());
    if loss_config.loss.uses_mean_logps() {
        let chosen_lengths: Vec<f32> =
            indices.iter().map(|&index| reference.chosen_tokens[index].max(1) as f32).collect();
        let rejected_lengths: Vec<f32> =
            indices.iter().map(|&index| reference.rejected_tokens[index].max(1) as f32).collect();
        for (value, length) in reference_chosen.iter_mut().zip(&chosen_lengths) {
            *value /= length;
        }
        for (value, length) in reference_rejected.iter_mut().zip(&rejected_lengths) {
            *value /= length;
        }
        policy_chosen = tensor(policy_chosen.div(&tensor(Tensor::new(chosen_lengths.as_slice(), device))?))?;
        policy_rejected =
            tensor(policy_rejected.div(&tensor(Tensor::new(rejected_lengths.as_slice(), device))?))?;
    }
    let reference_chosen = tensor(Tensor::new(reference_chosen.as_slice(), device))?;
    let reference_rejected = tensor(Tensor::new(reference_rejected.as_slice(), device))?;
    let output =
        dpo_loss(&policy_chosen, &policy_rejected, &reference_chosen, &reference_rejected, &loss_config)?;
    let loss_value = scalar(&output.loss)?;
    Ok(DpoBatchOutput { loss: output.loss, loss_value, metrics: output.metrics })
}

/// Pair-weighted means of a group's DPO metrics, plus the perplexities of the chosen
/// completions under the policy and the reference.
#[derive(Default)]
struct DpoAccumulator {
    loss: f64,
    rewards_chosen: f64,
    rewards_rejected: f64,
    rewards_margins: f64,
    rewards_accuracies: f64,
    logps_chosen: f64,
    logps_rejected: f64,
    policy_logp_sum: f64,
    reference_logp_sum: f64,
    chosen_tokens: usize,
}

impl DpoAccumulator {
    fn add(
        &mut self,
        output: &DpoBatchOutput,
        share: f64,
        policy_chosen: &Tensor,
        reference: &ReferenceLogps,
        indices: &[usize],
    ) -> Result<()> {
        let metrics = &output.metrics;
        self.loss += output.loss_value * share;
        self.rewards_chosen += metrics.rewards_chosen * share;
        self.rewards_rejected += metrics.rewards_rejected * share;
        self.rewards_margins += metrics.rewards_margins * share;
        self.rewards_accuracies += metrics.rewards_accuracies * share;
        self.logps_chosen += metrics.logps_chosen * share;
        self.logps_rejected += metrics.logps_rejected * share;
        let policy: Vec<f32> = tensor(policy_chosen.to_vec1::<f32>())?;
        self.policy_logp_sum += policy.iter().map(|value| f64::from(*value)).sum::<f64>();
        self.reference_logp_sum +=
            indices.iter().map(|&index| f64::from(reference.chosen[index])).sum::<f64>();
        self.chosen_tokens += indices.iter().map(|&index| reference.chosen_tokens[index]).sum::<usize>();
        Ok(())
    }

    fn metrics(&self) -> Vec<(String, f64)> {
        let tokens = self.chosen_tokens.max(1) as f64;
        vec![
            ("rewards/chosen".to_string(), self.rewards_chosen),
            ("rewards/rejected".to_string(), self.rewards_rejected),
            ("rewards/margins".to_string(), self.rewards_margins),
            ("rewards/accuracies".to_string(), self.rewards_accuracies),
            ("logps/chosen".to_string(), self.logps_chosen),
            ("logps/rejected".to_string(), self.logps_rejected),
            ("ppl/policy".to_string(), (-self.policy_logp_sum / tokens).exp()),
            ("ppl/reference".to_string(), (-self.reference_logp_sum / tokens).exp()),
        ]
    }
}

/// Evaluation on the held-out set, with no dropout.
struct Evaluation<'a> {
    config: &'a TrainConfig,
    data: &'a TrainData,
    references: Option<&'a (ReferenceLogps, Option<ReferenceLogps>)>,
}

impl Evaluation<'_> {
    /// The `eval/...` record of step `step`, updating the early-stopping state; `None`
    /// without evaluation data.
    fn run(
        &self,
        model: &TrainModel,
        step: usize,
        state: &mut TrainerState,
    ) -> Result<Option<Map<String, Value>>> {
        let Some(eval) = &self.data.eval else {
            return Ok(None);
        };
        model.set_training(false, 0);
        let batch_size = self.config.training.batch_size;
        let mut record = Map::new();
        record.insert("step".to_string(), step.into());
        let loss = match eval {
            Dataset::Sft(examples) => {
                let mut nll = 0.0;
                let mut targets = 0usize;
                let all: Vec<usize> = (0..examples.len()).collect();
                for indices in all.chunks(batch_size) {
                    let batch = sft_batch(model, examples, indices)?;
                    let count = batch.scored();
                    let loss = on_pool(|| sft_loss(&batch, &model.model.target_logprobs(&batch)?))?;
                    nll += scalar(&loss)? * count as f64;
                    targets += count;
                }
                let loss = nll / targets.max(1) as f64;
                record.insert("eval/ppl".to_string(), number(loss.exp()));
                loss
            }
            Dataset::Preferences(pairs) => {
                let Some((_, Some(reference))) = self.references else {
                    return Ok(None);
                };
                let all: Vec<usize> = (0..pairs.len()).collect();
                let mut accumulated = DpoAccumulator::default();
                for indices in all.chunks(batch_size) {
                    let chunk: Vec<&PreferencePair> = indices.iter().map(|&index| &pairs[index]).collect();
                    let (policy_chosen, policy_rejected) =
                        on_pool(|| reference::pair_logps(&model.model, &chunk))?;
                    let output = dpo_micro_batch(
                        self.config,
                        model,
                        &policy_chosen,
                        &policy_rejected,
                        reference,
                        indices,
                    )?;
                    let share = indices.len() as f64 / pairs.len() as f64;
                    accumulated.add(&output, share, &policy_chosen, reference, indices)?;
                }
                for (name, value) in accumulated.metrics() {
                    record.insert(format!("eval/{name}"), number(value));
                }
                accumulated.loss
            }
        };
        record.insert("eval/loss".to_string(), number(loss));
        if state.best_eval_loss.is_none_or(|best| loss < best) {
            state.best_eval_loss = Some(loss);
            state.evals_without_improvement = 0;
        } else if step > 0 {
            state.evals_without_improvement += 1;
        }
        Ok(Some(record))
    }
}

fn reference_logps(
    config: &TrainConfig,
    model: &TrainModel,
    pairs: &[PreferencePair],
    options: &TrainOptions,
    observer: &mut dyn Observer,
) -> Result<ReferenceLogps> {
    let key = reference::reference_key(&model.path, pairs)?;
    let batch_size = config.training.batch_size;
    let (logps, cached) = reference::load_or_compute(&options.reference_cache, &key, || {
        match model.with_base(|base| reference::compute(base, pairs, batch_size)) {
            Some(result) => result,
            None => reference::compute(&load_frozen(&model.path, model.model.device())?, pairs, batch_size),
        }
    })?;
    if logps.chosen.len() != pairs.len() {
        return Err(TrainError::Other(format!(
            "{}: reference cache holds {} pairs, the data {}",
            reference::cache_path(&options.reference_cache, &key).display(),
            logps.chosen.len(),
            pairs.len()
        )));
    }
    observer.message(&format!(
        "reference log-probs of {} pairs {}",
        pairs.len(),
        if cached { "read from the cache" } else { "computed and cached" }
    ));
    Ok(logps)
}

fn save_checkpoint(
    config: &TrainConfig,
    model: &TrainModel,
    optimizer: &AdamW,
    run: &RunDir,
    state: &TrainerState,
    keep: usize,
) -> Result<()> {
    let dir = run.begin_checkpoint(state.step)?;
    model.save_weights(&dir, &config.model)?;
    optimizer.save(&dir.join(OPTIMIZER_FILE))?;
    run.commit_checkpoint(&dir, state.step, state, keep)?;
    Ok(())
}

/// Greedy generations on the configured prompts (`model` = "policy" or "reference"; the
/// reference is the start model, sampled before the first step).
fn sample_records(
    config: &TrainConfig,
    model: &TrainModel,
    step: usize,
    which: &str,
) -> Result<Vec<Map<String, Value>>> {
    if config.samples.prompts.is_empty() {
        return Ok(Vec::new());
    }
    let replies = model.greedy_replies(&config.samples.prompts, config.samples.max_new_tokens)?;
    Ok(config
        .samples
        .prompts
        .iter()
        .zip(replies)
        .map(|(prompt, text)| {
            let mut record = Map::new();
            record.insert("step".to_string(), step.into());
            record.insert("model".to_string(), which.into());
            record.insert("prompt".to_string(), prompt.clone().into());
            record.insert("text".to_string(), text.into());
            record
        })
        .collect())
}

/// The device training runs on.
pub fn device() -> Device {
    Device::Cpu
}

/// Where a workspace keeps its runs and the reference cache.
pub fn runs_dir(workspace: &Path) -> PathBuf {
    workspace.join("runs")
}

/// One timed optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// CPU seconds of the whole process (all threads) during the step, where the platform
    /// tells ([`agora_core::time::process_cpu_seconds`]): free of a shared host's steal.
    pub cpu_seconds: Option<f64>,
    /// Tokens trained in the step.
    pub tokens: usize,
}

/// Times `repeats` optimizer steps (after one untimed warm-up step) on the first
/// `training.batch_size` examples, through the same step code as [`train`]: forward,
/// loss, backward, clipping and AdamW. DPO's reference log-probabilities are computed
/// first and not timed (training reads them from its cache). Returns each timed step's
/// [`StepTiming`]: what `agora bench train` reports.
pub fn time_steps(
    config: &TrainConfig,
    model: &TrainModel,
    train: &Dataset,
    repeats: usize,
) -> Result<Vec<StepTiming>> {
    let params = model.parameters()?;
    let mut optimizer = adamw(config, &params)?;
    let mut gradients = Gradients::new(&params);
    let group: Group = vec![(0..config.training.batch_size.min(train.len())).collect()];
    let reference = match train {
        Dataset::Preferences(pairs) => {
            Some(reference::compute(&model.model, pairs, config.training.batch_size)?)
        }
        Dataset::Sft(_) => None,
    };
    let mut timings = Vec::with_capacity(repeats);
    for step in 0..=repeats {
        let started = Instant::now();
        let cpu_before = agora_core::time::process_cpu_seconds();
        let (outcome, _) = optimizer_step(
            config,
            model,
            (&params, &mut gradients, &mut optimizer),
            (train, reference.as_ref()),
            &group,
            step,
            config.optimizer.learning_rate,
        )?;
        if step > 0 {
            let seconds = started.elapsed().as_secs_f64();
            let cpu_seconds = cpu_before.zip(agora_core::time::process_cpu_seconds()).map(|(a, b)| b - a);
            timings.push(StepTiming { seconds, cpu_seconds, tokens: outcome.tokens });
        }
    }
    Ok(timings)
}
