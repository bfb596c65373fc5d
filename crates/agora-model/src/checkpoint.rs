//! Saving trained weights as a Hugging Face folder (`model.safetensors` +
//! `config.json`) that agora, transformers and llama.cpp's converter all read.
//!
//! Trainable models register their variables under Hugging Face names (see
//! [`crate::weights::Trainable`]), so a `VarMap` already is a checkpoint's tensor map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;

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
    let partial = partial_path(path);
    candle_core::safetensors::save(&tensors, &partial)
        .map_err(|error| ModelError::file(&partial, format!("cannot write safetensors: {error}")))?;
    rename(&partial, path)
}

/// Writes a Hugging Face folder: `dir/model.safetensors` from `varmap` and
/// `dir/config.json` from `config` (usually the `config.json` the model was loaded from,
/// with `vocab_size` updated after a resize).
pub fn save_checkpoint(varmap: &VarMap, config: &serde_json::Value, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    let config_path = dir.join("config.json");
    let partial = partial_path(&config_path);
    let text = serde_json::to_string_pretty(config)
        .map_err(|error| ModelError::Config(format!("cannot serialise config.json: {error}")))?;
    std::fs::write(&partial, text + "\n")
        .map_err(|source| ModelError::Io { path: partial.clone(), source })?;
    rename(&partial, &config_path)?;
    save_varmap(varmap, &dir.join("model.safetensors"))
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
