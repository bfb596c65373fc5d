//! Saving trained weights as a Hugging Face folder (`model.safetensors` +
//! `config.json`) that agora, transformers and llama.cpp's converter all read: from a
//! trainable model's `VarMap`, or from a whole model (after a LoRA merge).
//!
//! Trainable models register their variables under Hugging Face names (see
//! [`crate::weights::Trainable`]), so a `VarMap` already is a checkpoint's tensor map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::gpt2::Gpt2Config;
use crate::llama::LlamaConfig;
use crate::ops::RopeScaling;
use crate::weights::Model;
use crate::{ModelError, Result};

/// Writes every variable of `varmap` to the safetensors file `path`, through a temporary
/// file renamed into place, so a crash never leaves half a checkpoint under that name.
pub fn save_varmap(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| ModelError::Config("the VarMap lock is poisoned".to_string()))?;
        vars.iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect()
    };
    save_tensors(&tensors, path)
}

/// Writes a Hugging Face folder: `dir/model.safetensors` from `varmap` and
/// `dir/config.json` from `config` (usually the `config.json` the model was loaded from,
/// with `vocab_size` updated after a resize).
pub fn save_checkpoint(varmap: &VarMap, config: &serde_json::Value, dir: &Path) -> Result<()> {
    create_dir(dir)?;
    write_json(config, &dir.join("config.json"))?;
    save_varmap(varmap, &dir.join("model.safetensors"))
}

/// Writes a whole model (f32, no adapters attached: merge them first) as a Hugging Face
/// folder: `model.safetensors` with `save_pretrained`'s tensor names and a `config.json`
/// rebuilt from the model's resolved settings, so a Llama read from a GGUF file gets one
/// too. The tokenizer files are the caller's to write.
pub fn save_model(model: &Model, dir: &Path) -> Result<()> {
    let config = match model {
        Model::Gpt2(model) => gpt2_config_json(model.config()),
        Model::Llama(model) => llama_config_json(model.config())?,
    };
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()?
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.detach().contiguous()?)))
        .collect::<Result<_>>()?;
    create_dir(dir)?;
    write_json(&config, &dir.join("config.json"))?;
    save_tensors(&tensors, &dir.join("model.safetensors"))
}

/// `config.json` of `GPT2LMHeadModel` for these settings.
fn gpt2_config_json(config: &Gpt2Config) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_inner": config.n_inner,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "activation_function": config.activation_function,
        "scale_attn_weights": config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype": "float32",
    })
}

/// `config.json` of `LlamaForCausalLM` (or `Qwen2ForCausalLM` when q/k/v carry biases:
/// Llama's `attention_bias` would also bias `o_proj`) for these settings.
fn llama_config_json(config: &LlamaConfig) -> Result<serde_json::Value> {
    let rope_scaling = match &config.rope_scaling {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Linear { factor } => serde_json::json!({ "rope_type": "linear", "factor": factor }),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            })
        }
        RopeScaling::Factors(_) => {
            return Err(ModelError::Config(
                "this model's rope scaling is a table of per-frequency factors (llama.cpp's \
                 rope_freqs), which config.json cannot express"
                    .to_string(),
            ));
        }
    };
    let (architecture, model_type) =
        if config.qkv_bias { ("Qwen2ForCausalLM", "qwen2") } else { ("LlamaForCausalLM", "llama") };
    Ok(serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.qkv_bias,
        "hidden_act": "silu",
        "dtype": "float32",
    }))
}

pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })
}

/// Writes `value` as pretty JSON to `path` through a temporary file renamed into place.
pub(crate) fn write_json(value: &serde_json::Value, path: &Path) -> Result<()> {
    let partial = partial_path(path);
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| ModelError::file(path, format!("cannot serialise JSON: {error}")))?;
    std::fs::write(&partial, text + "\n")
        .map_err(|source| ModelError::Io { path: partial.clone(), source })?;
    rename(&partial, path)
}

/// Writes named tensors to the safetensors file `path` through a temporary file renamed
/// into place.
pub(crate) fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let partial = partial_path(path);
    candle_core::safetensors::save(tensors, &partial)
        .map_err(|error| ModelError::file(&partial, format!("cannot write safetensors: {error}")))?;
    rename(&partial, path)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| ModelError::Io { path: to.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::LanguageModel;
    use crate::weights::{Model, Trainable};

    #[test]
    fn a_saved_checkpoint_loads_back_with_the_same_logits() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models/llama3_rope");
        let varmap = VarMap::new();
        Model::from_hf_dir(&source, &Device::Cpu, Trainable::Yes(&varmap)).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(&varmap, &config, dir.path()).unwrap();
        assert!(!dir.path().join("model.safetensors.partial").exists());

        let reloaded = Model::load(dir.path(), &Device::Cpu).unwrap();
        let golden = candle_core::safetensors::load(source.join("golden.safetensors"), &Device::Cpu).unwrap();
        let tokens = golden["input_ids"].to_dtype(DType::U32).unwrap();
        let logits = reloaded.forward(&tokens, None, &mut reloaded.new_cache()).unwrap();
        let difference = (logits - &golden["logits"]).unwrap().abs().unwrap();
        let difference = difference.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(difference < 1e-4, "{difference}");
    }
}
