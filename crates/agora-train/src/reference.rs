//! DPO's reference log-probabilities, computed once and cached on disk.
//!
//! The reference model never changes during training, so the log-probability it gives
//! each chosen and rejected completion is computed before the first step (by the frozen
//! start model, or by the base model with the LoRA adapters switched off, which is the
//! same model) and kept in `<cache>/<key>.json`. The key hashes the model file's identity
//! and every token of every pair, so the runs of a sweep over the same model and data
//! share one computation, and any change to either computes afresh.

use std::io::Read;
use std::path::{Path, PathBuf};

use agora_model::LanguageModel;
use agora_model::scoring::ScoringBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::PreferencePair;
use crate::error::{Result, TrainError};
use crate::model::tensor;

/// Sums of the reference log-probabilities of each pair's completions, and their token
/// counts (IPO uses per-token means).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogps {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub chosen_tokens: Vec<usize>,
    pub rejected_tokens: Vec<usize>,
}

/// What identifies a reference computation: the model file (path, size, modification
/// time, and a hash of its first MiB) and the token ids of every pair in order.
pub fn reference_key(model_path: &Path, pairs: &[PreferencePair]) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"agora-reference-v1\0");
    hasher.update(model_identity(model_path)?.as_bytes());
    for pair in pairs {
        for part in [&pair.prompt, &pair.chosen, &pair.rejected] {
            hasher.update((part.len() as u64).to_le_bytes());
            for token in part.iter() {
                hasher.update(token.to_le_bytes());
            }
        }
    }
    Ok(hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
}

fn model_identity(path: &Path) -> Result<String> {
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    let io = |source| TrainError::Io { path: file.clone(), source };
    let metadata = std::fs::metadata(&file).map_err(io)?;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|duration| duration.as_nanos())
        .unwrap_or_default();
    let mut head = Vec::with_capacity(1 << 20);
    std::fs::File::open(&file).and_then(|handle| handle.take(1 << 20).read_to_end(&mut head)).map_err(io)?;
    let head: String = Sha256::digest(&head).iter().map(|byte| format!("{byte:02x}")).collect();
    let canonical = std::fs::canonicalize(&file).unwrap_or(file.clone());
    Ok(format!("{}|{}|{modified}|{head}", canonical.display(), metadata.len()))
}

/// Reads the cached log-probabilities for `key`, or computes and stores them. Returns
/// them and whether they came from the cache.
pub fn load_or_compute(
    cache_dir: &Path,
    key: &str,
    compute: impl FnOnce() -> Result<ReferenceLogps>,
) -> Result<(ReferenceLogps, bool)> {
    let path = cache_path(cache_dir, key);
    if path.is_file() {
        let text =
            std::fs::read_to_string(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
        // A damaged cache file is computed again rather than trusted.
        if let Ok(cached) = serde_json::from_str::<ReferenceLogps>(&text) {
            return Ok((cached, true));
        }
    }
    let computed = compute()?;
    std::fs::create_dir_all(cache_dir)
        .map_err(|source| TrainError::Io { path: cache_dir.to_path_buf(), source })?;
    let text = serde_json::to_string(&computed).map_err(|error| TrainError::Other(error.to_string()))?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text).map_err(|source| TrainError::Io { path: partial.clone(), source })?;
    std::fs::rename(&partial, &path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
    Ok((computed, false))
}

pub fn cache_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("{key}.json"))
}

/// The reference log-probabilities of every pair, `batch_size` pairs per forward pass.
pub fn compute(
    model: &dyn LanguageModel,
    pairs: &[PreferencePair],
    batch_size: usize,
) -> Result<ReferenceLogps> {
    let mut logps = ReferenceLogps {
        chosen: Vec::with_capacity(pairs.len()),
        rejected: Vec::with_capacity(pairs.len()),
        chosen_tokens: pairs.iter().map(|pair| pair.chosen.len()).collect(),
        rejected_tokens: pairs.iter().map(|pair| pair.rejected.len()).collect(),
    };
    for chunk in pairs.chunks(batch_size.max(1)) {
        let chunk: Vec<&PreferencePair> = chunk.iter().collect();
        let (chosen, rejected) = agora_model::engine::on_pool(|| pair_logps(model, &chunk))?;
        logps.chosen.extend(tensor(chosen.to_vec1::<f32>())?);
        logps.rejected.extend(tensor(rejected.to_vec1::<f32>())?);
    }
    Ok(logps)
}

/// Sequence log-probabilities of the chosen and the rejected completion of each pair,
/// both in one forward pass (chosen rows first, as TRL's concatenated forward):
/// `([pairs], [pairs])`, differentiable when the model is.
pub fn pair_logps(
    model: &dyn LanguageModel,
    pairs: &[&PreferencePair],
) -> Result<(agora_model::Tensor, agora_model::Tensor)> {
    let batch = pair_batch(model, pairs)?;
    let sums = batch.row_sums(&model.target_logprobs(&batch)?)?;
    let count = pairs.len();
    Ok((tensor(sums.narrow(0, 0, count))?, tensor(sums.narrow(0, count, count))?))
}

pub fn pair_batch(model: &dyn LanguageModel, pairs: &[&PreferencePair]) -> Result<ScoringBatch> {
    let prompts: Vec<Vec<u32>> = pairs.iter().chain(pairs).map(|pair| pair.prompt.clone()).collect();
    let completions: Vec<Vec<u32>> = pairs
        .iter()
        .map(|pair| pair.chosen.clone())
        .chain(pairs.iter().map(|pair| pair.rejected.clone()))
        .collect();
    Ok(ScoringBatch::new(&prompts, &completions, model.device())?)
}
