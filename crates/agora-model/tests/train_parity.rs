//! Training parity with PyTorch, transformers and TRL: the SFT loss and the gradient of
//! every parameter, each DPO variant's loss, metrics and gradients, and two AdamW steps,
//! against goldens written by scripts/goldens/make_train_goldens.py into
//! test_data/train/.
//!
//! Tensors are compared per tensor as `max|actual - expected| <= tolerance * max|expected|`
//! (no absolute floor was needed), losses and metrics as relative differences.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use agora_model::scoring::ScoringBatch;
use agora_model::train::{
    AdamW, AdamWConfig, DpoConfig, DpoLossKind, Gradients, Parameters, dpo_loss, sft_loss,
};
use agora_model::weights::{Model, Trainable};
use agora_model::{DType, Device, LanguageModel, Tensor, Var, VarMap};

const MODELS: [&str; 2] = ["gpt2", "llama"];
/// Losses, gradients and DPO metrics.
const TOLERANCE: f64 = 1e-5;
const ADAMW_TOLERANCE: f64 = 1e-6;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data")
}

fn golden(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data_dir().join("train").join(file), &Device::Cpu).unwrap()
}

fn trainable(name: &str) -> (VarMap, Model) {
    let varmap = VarMap::new();
    let model =
        Model::from_hf_dir(&data_dir().join("models").join(name), &Device::Cpu, Trainable::Yes(&varmap))
            .unwrap();
    (varmap, model)
}

fn scalar(tensor: &Tensor) -> f64 {
    tensor.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
}

fn check_number(what: &str, actual: f64, expected: f64, tolerance: f64) {
    let difference = (actual - expected).abs();
    assert!(
        difference <= tolerance * expected.abs(),
        "{what}: {actual} != {expected} (difference {difference:e})"
    );
}

/// `max|actual - expected| <= tolerance * max|expected|`; returns the ratio of the two
/// sides' measures for the summary line.
fn check_tensor(what: &str, actual: &Tensor, expected: &Tensor, tolerance: f64) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let actual = actual.to_dtype(DType::F64).unwrap();
    let expected = expected.to_dtype(DType::F64).unwrap();
    let difference =
        scalar(&(actual - &expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap());
    let scale = scalar(&expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap());
    assert!(scale > 0.0, "{what}: the golden is all zeros");
    assert!(
        difference <= tolerance * scale,
        "{what}: max difference {difference:e} against max |value| {scale:e}"
    );
    difference / scale
}

/// Rows (padding cut off by the attention mask) and target flags (`flags != 0` or,
/// for labels, `!= -100`) of a golden batch.
fn rows_and_targets(
    ids: &Tensor,
    mask: &Tensor,
    flags: &Tensor,
    is_target: fn(i64) -> bool,
) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let ids = ids.to_vec2::<i64>().unwrap();
    let mask = mask.to_vec2::<i64>().unwrap();
    let flags = flags.to_vec2::<i64>().unwrap();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for ((ids, mask), flags) in ids.iter().zip(&mask).zip(&flags) {
        let real = mask.iter().filter(|&&value| value == 1).count();
        rows.push(ids[..real].iter().map(|&id| id as u32).collect());
        targets.push(flags[..real].iter().map(|&flag| is_target(flag)).collect());
    }
    (rows, targets)
}

fn batch_and_logprobs(
    model: &Model,
    rows: &[Vec<u32>],
    targets: &[Vec<bool>],
    golden_ids: &Tensor,
) -> (ScoringBatch, Tensor) {
    let batch = ScoringBatch::from_targets(rows, targets, &Device::Cpu).unwrap();
    // Same padded layout as the golden batch (padding id 0).
    assert_eq!(
        batch.tokens.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap(),
        golden_ids.to_vec2::<i64>().unwrap()
    );
    // The training path: the output layer fused with the log-softmax, on the scored
    // positions only. Checked against the full logits' log-softmax here, and against
    // transformers by the callers.
    let logprobs = model.target_logprobs(&batch).unwrap();
    let logits = model.forward(&batch.tokens, Some(&batch.mask), &mut model.new_cache()).unwrap();
    check_tensor(
        "fused against full-logits log-probs",
        &logprobs,
        &batch.token_logprobs(&logits).unwrap(),
        1e-6,
    );
    (batch, logprobs)
}

#[test]
fn sft_loss_and_every_gradient_match_transformers() {
    for name in MODELS {
        let golden = golden(&format!("{name}.safetensors"));
        let (varmap, model) = trainable(name);
        let (rows, targets) = rows_and_targets(
            &golden["sft.input_ids"],
            &golden["sft.attention_mask"],
            &golden["sft.labels"],
            |label| label != -100,
        );
        // Row 2 is a two-turn chat: two separate target spans.
        assert_eq!(targets[2].iter().filter(|&&target| target).count(), 5);
        let (batch, logprobs) = batch_and_logprobs(&model, &rows, &targets, &golden["sft.input_ids"]);
        let loss = sft_loss(&batch, &logprobs).unwrap();
        let expected_loss = scalar(&golden["sft.loss"]);
        check_number(&format!("{name} SFT loss"), scalar(&loss), expected_loss, TOLERANCE);
        eprintln!("{name}: SFT loss {:.7} against transformers' {expected_loss:.7}", scalar(&loss));

        let params = Parameters::from_varmap(&varmap).unwrap();
        let mut gradients = Gradients::new(&params);
        gradients.accumulate(&loss, &params, 1.0).unwrap();
        assert!(gradients.missing().is_empty(), "{name}: no gradient for {:?}", gradients.missing());
        let expected_names: BTreeSet<&str> =
            golden.keys().filter_map(|key| key.strip_prefix("sft.grad.")).collect();
        let names: BTreeSet<&str> = params.names().into_iter().collect();
        assert_eq!(
            names, expected_names,
            "{name}: trainable parameters against transformers' named_parameters"
        );
        let mut worst: f64 = 0.0;
        for parameter in params.names() {
            let gradient = gradients.get(parameter).unwrap();
            let magnitude = scalar(&gradient.abs().unwrap().sum_all().unwrap());
            assert!(magnitude > 0.0 && magnitude.is_finite(), "{name}: {parameter} gradient {magnitude}");
            let expected = &golden[&format!("sft.grad.{parameter}")];
            worst = worst.max(check_tensor(
                &format!("{name} SFT gradient of {parameter}"),
                gradient,
                expected,
                TOLERANCE,
            ));
        }
        eprintln!(
            "{name}: SFT over {} parameters, worst gradient difference {worst:.2e} of max |gradient|",
            params.len()
        );
    }
}

fn variant_config(golden: &HashMap<String, Tensor>, variant: &str) -> DpoConfig {
    let kind = variant.strip_suffix("_smoothed").unwrap_or(variant);
    DpoConfig {
        beta: scalar(&golden[&format!("dpo.{variant}.beta")]),
        loss: kind.parse::<DpoLossKind>().unwrap(),
        label_smoothing: scalar(&golden[&format!("dpo.{variant}.label_smoothing")]),
    }
}

#[test]
fn dpo_losses_metrics_and_gradients_match_trl() {
    for name in MODELS {
        let golden = golden(&format!("{name}.safetensors"));
        let (varmap, model) = trainable(name);
        let (rows, targets) = rows_and_targets(
            &golden["dpo.input_ids"],
            &golden["dpo.attention_mask"],
            &golden["dpo.completion_mask"],
            |flag| flag != 0,
        );
        let (batch, logprobs) = batch_and_logprobs(&model, &rows, &targets, &golden["dpo.input_ids"]);
        let sums = batch.row_sums(&logprobs).unwrap();
        let lengths: Vec<f32> = batch.lengths().iter().map(|&length| length as f32).collect();
        let means = sums.broadcast_div(&Tensor::new(lengths.as_slice(), &Device::Cpu).unwrap()).unwrap();
        check_tensor(
            &format!("{name} policy log-prob sums"),
            &sums,
            &golden["dpo.policy_logps_sum"],
            TOLERANCE,
        );
        check_tensor(
            &format!("{name} policy log-prob means"),
            &means,
            &golden["dpo.policy_logps_mean"],
            TOLERANCE,
        );

        let params = Parameters::from_varmap(&varmap).unwrap();
        let variants: BTreeSet<&str> =
            golden.keys().filter_map(|key| key.strip_prefix("dpo.")?.strip_suffix(".loss")).collect();
        assert_eq!(variants.len(), 5, "{variants:?}");
        for variant in variants {
            let config = variant_config(&golden, variant);
            let (policy, kind) =
                if config.loss.uses_mean_logps() { (&means, "mean") } else { (&sums, "sum") };
            let pairs = policy.dim(0).unwrap() / 2;
            let output = dpo_loss(
                &policy.narrow(0, 0, pairs).unwrap(),
                &policy.narrow(0, pairs, pairs).unwrap(),
                &golden[&format!("dpo.reference_chosen_{kind}")],
                &golden[&format!("dpo.reference_rejected_{kind}")],
                &config,
            )
            .unwrap();
            let what = format!("{name} DPO {variant}");
            check_number(
                &format!("{what} loss"),
                scalar(&output.loss),
                scalar(&golden[&format!("dpo.{variant}.loss")]),
                TOLERANCE,
            );

            let expected = golden[&format!("dpo.{variant}.metrics")].to_vec1::<f64>().unwrap();
            let metrics = output.metrics;
            let actual = [
                metrics.rewards_chosen,
                metrics.rewards_rejected,
                metrics.rewards_margins,
                metrics.rewards_accuracies,
                metrics.logps_chosen,
                metrics.logps_rejected,
            ];
            let labels = [
                "rewards/chosen",
                "rewards/rejected",
                "rewards/margins",
                "rewards/accuracies",
                "logps/chosen",
                "logps/rejected",
            ];
            for ((label, actual), expected) in labels.iter().zip(actual).zip(expected) {
                check_number(&format!("{what} {label}"), actual, expected, TOLERANCE);
            }

            let mut gradients = Gradients::new(&params);
            gradients.accumulate(&output.loss, &params, 1.0).unwrap();
            let prefix = format!("dpo.{variant}.grad.");
            let mut watched = 0;
            let mut worst: f64 = 0.0;
            for (key, expected) in golden.iter().filter(|(key, _)| key.starts_with(&prefix)) {
                let parameter = &key[prefix.len()..];
                let gradient = gradients.get(parameter).unwrap();
                worst = worst.max(check_tensor(
                    &format!("{what} gradient of {parameter}"),
                    gradient,
                    expected,
                    TOLERANCE,
                ));
                watched += 1;
            }
            assert_eq!(watched, 4, "{what}");
            eprintln!(
                "{what}: loss {:.6}, worst gradient difference {worst:.2e} of max |gradient|",
                scalar(&output.loss)
            );
        }
    }
}

/// Gradients equal to `values`: the gradient of `sum(parameter * values)`.
fn given_gradients(params: &Parameters, values: &HashMap<&str, Tensor>) -> Gradients {
    let mut gradients = Gradients::new(params);
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (name, var) in params.iter() {
        let term = (var.as_tensor() * &values[name]).unwrap().sum_all().unwrap();
        loss = (loss + term).unwrap();
    }
    gradients.accumulate(&loss, params, 1.0).unwrap();
    for (name, _) in params.iter() {
        assert_eq!(
            gradients.get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            values[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    gradients
}

#[test]
fn two_adamw_steps_match_torch_across_a_save_and_load() {
    let golden = golden("adamw.safetensors");
    let names = ["b", "big", "w"];
    let vars: Vec<Var> = names
        .iter()
        .map(|name| Var::from_tensor(&golden[&format!("{name}.before")].copy().unwrap()).unwrap())
        .collect();
    let params =
        Parameters::new(names.iter().map(|name| name.to_string()).zip(vars.iter().cloned())).unwrap();
    assert_eq!(params.count(), 7 + 20_000 + 20);
    let config = AdamWConfig { weight_decay: scalar(&golden["weight_decay"]), ..AdamWConfig::default() };
    let learning_rate = scalar(&golden["lr"]);
    let directory = tempfile::tempdir().unwrap();
    let state = directory.path().join("optimizer.safetensors");

    let mut optimizer = AdamW::new(&params, config).unwrap();
    for step in [1, 2] {
        if step == 2 {
            // Resume from disk: the second step must not notice.
            optimizer.save(&state).unwrap();
            optimizer = AdamW::new(&params, config).unwrap();
            optimizer.load(&state).unwrap();
        }
        let values: HashMap<&str, Tensor> =
            names.iter().map(|&name| (name, golden[&format!("{name}.grad{step}")].clone())).collect();
        let gradients = given_gradients(&params, &values);
        optimizer.step(&params, &gradients, learning_rate).unwrap();
        assert_eq!(optimizer.steps_taken(), step);
        for (name, var) in names.iter().zip(&vars) {
            let expected = &golden[&format!("{name}.after{step}")];
            let ratio = check_tensor(
                &format!("AdamW step {step} {name}"),
                var.as_tensor(),
                expected,
                ADAMW_TOLERANCE,
            );
            eprintln!("AdamW step {step} {name}: difference {ratio:.2e} of max |value|");
        }
    }

    optimizer.save(&state).unwrap();
    let saved = candle_core::safetensors::load(&state, &Device::Cpu).unwrap();
    assert_eq!(scalar(&saved["step"]), 2.0);
    for name in names {
        for moment in ["exp_avg", "exp_avg_sq"] {
            let key = format!("{name}.{moment}");
            check_tensor(&format!("AdamW {key}"), &saved[&key], &golden[&key], ADAMW_TOLERANCE);
        }
    }
}
