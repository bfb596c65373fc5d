//! Every trainable tensor of every architecture receives a gradient: the guard against
//! an op without a backward pass silently cutting parameters off.

use std::path::{Path, PathBuf};

use agora_model::gpt2::Gpt2;
use agora_model::weights::{Model, Trainable};
use agora_model::{Device, LanguageModel, Tensor};
use candle_nn::VarMap;

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name)
}

/// Mean next-token cross-entropy over every position of a padded batch, from the
/// model's logits.
fn loss(model: &dyn LanguageModel, rows: &[Vec<u32>]) -> Tensor {
    let length = rows.iter().map(Vec::len).max().unwrap();
    let padded: Vec<Vec<u32>> = rows
        .iter()
        .map(|row| row.iter().copied().chain(std::iter::repeat(0)).take(length).collect())
        .collect();
    let mask: Vec<Vec<u32>> = rows
        .iter()
        .map(|row| (0..length).map(|position| u32::from(position < row.len())).collect())
        .collect();
    let prompts: Vec<Vec<u32>> = rows.iter().map(|row| row[..1].to_vec()).collect();
    let continuations: Vec<Vec<u32>> = rows.iter().map(|row| row[1..].to_vec()).collect();
    // The padded forward pass the scorer builds is exactly this one.
    let batch = agora_model::scoring::ScoringBatch::new(&prompts, &continuations, &Device::Cpu).unwrap();
    assert_eq!(batch.tokens.to_vec2::<u32>().unwrap(), padded);
    assert_eq!(batch.mask.to_vec2::<u32>().unwrap(), mask);
    let token_logprobs = model.target_logprobs(&batch).unwrap();
    (token_logprobs.mean_all().unwrap() * -1.0).unwrap()
}

/// Backpropagates the loss and names every variable without a non-zero gradient.
fn check(name: &str, varmap: &VarMap, model: &dyn LanguageModel, rows: &[Vec<u32>]) {
    let loss = loss(model, rows);
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let gradients = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert!(!vars.is_empty());
    let mut missing = Vec::new();
    for (var_name, var) in vars.iter() {
        let magnitude = gradients
            .get(var.as_tensor())
            .map(|gradient| gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap());
        if !matches!(magnitude, Some(value) if value > 0.0 && value.is_finite()) {
            missing.push(format!("{var_name} ({magnitude:?})"));
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "{name}: no gradient for {missing:?}");
}

#[test]
fn every_parameter_of_every_architecture_gets_a_gradient() {
    let rows = vec![vec![5, 17, 99, 3, 42, 42, 7, 120], vec![9, 8, 7, 6]];
    for name in ["llama", "llama3_rope", "qwen2", "gpt2"] {
        let varmap = VarMap::new();
        let model = Model::from_hf_dir(&model_dir(name), &Device::Cpu, Trainable::Yes(&varmap)).unwrap();
        check(name, &varmap, &model, &rows);
    }
}

#[test]
fn resized_gpt2_embeddings_train() {
    let varmap = VarMap::new();
    let mut model = Gpt2::from_hf_dir(&model_dir("gpt2"), &Device::Cpu, Trainable::Yes(&varmap)).unwrap();
    model.resize_token_embeddings(134, Trainable::Yes(&varmap)).unwrap();
    assert_eq!(model.vocab_size(), 134);
    let table = varmap.data().lock().unwrap()["transformer.wte.weight"].as_tensor().clone();
    assert_eq!(table.dims(), [134, 64]);
    // New rows start as the mean of the old ones.
    let mean = table.narrow(0, 0, 128).unwrap().mean(0).unwrap();
    let new_row = table.get(133).unwrap();
    let difference = (new_row - mean).unwrap().abs().unwrap().max(0).unwrap();
    assert!(difference.to_scalar::<f32>().unwrap() < 1e-6);
    // Rows using the new tokens (ids 128..134) train every parameter, the new rows too.
    check("gpt2 resized", &varmap, &model, &[vec![128, 5, 133, 7, 129], vec![130, 131, 132]]);
}
