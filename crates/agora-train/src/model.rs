//! The model being trained: loaded in f32 from a GGUF file or a Hugging Face folder,
//! either with every weight a trainable variable (full fine-tuning) or frozen with LoRA
//! adapters on the chosen layers; and how its trainable weights are saved and restored.

use std::path::{Path, PathBuf};

use agora_model::generate::{Control, GenerateOptions, generate};
use agora_model::lora::{LoraAdapters, LoraConfig};
use agora_model::train::optim::Parameters;
use agora_model::weights::{Model, Precision, Trainable};
use agora_model::{ChatTemplate, Device, LanguageModel, Message, SamplingConfig, Tokenizer, VarMap};

use crate::error::{Result, TrainError};

/// What holds the trainable variables.
pub enum Tuning {
    /// Every weight of the model, under its Hugging Face name.
    Full(VarMap),
    Lora(LoraAdapters),
}

impl std::fmt::Debug for Tuning {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Tuning::Full(_) => "Tuning::Full",
            Tuning::Lora(_) => "Tuning::Lora",
        })
    }
}

#[derive(Debug)]
pub struct TrainModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub tuning: Tuning,
    pub path: PathBuf,
}

/// A tensor operation's result (candle's error type, which agora-model wraps) as ours.
pub(crate) fn tensor<T, E>(result: std::result::Result<T, E>) -> Result<T>
where
    agora_model::ModelError: From<E>,
{
    result.map_err(|error| TrainError::Model(error.into()))
}

/// The file of a checkpoint's trainable weights.
pub const FULL_WEIGHTS: &str = "model.safetensors";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Loads `path` (a GGUF file or a Hugging Face folder) with its tokenizer, dequantized to
/// f32; without `lora` every weight becomes trainable.
pub fn load_model(path: &Path, device: &Device, lora: Option<&LoraConfig>, seed: u64) -> Result<TrainModel> {
    let (tokenizer, template) = read_tokenizer(path)?;
    let varmap = VarMap::new();
    let trainable = if lora.is_some() { Trainable::No } else { Trainable::Yes(&varmap) };
    let mut model = if path.is_dir() {
        Model::from_hf_dir(path, device, trainable)?
    } else {
        Model::from_gguf(path, device, Precision::F32, trainable)?
    };
    let tuning = match lora {
        Some(config) => Tuning::Lora(LoraAdapters::attach(&mut model, config, seed)?),
        None => Tuning::Full(varmap),
    };
    Ok(TrainModel { model, tokenizer, template, tuning, path: path.to_path_buf() })
}

/// The tokenizer and chat template of a GGUF file or a Hugging Face folder.
fn read_tokenizer(path: &Path) -> Result<(Tokenizer, ChatTemplate)> {
    let tokenizer = if path.is_dir() { Tokenizer::from_folder(path)? } else { Tokenizer::from_gguf(path)? };
    let template = tokenizer.chat_template()?;
    Ok((tokenizer, template))
}

/// A model in f32 for generation only: nothing in it is trainable.
pub fn load_for_generation(path: &Path, device: &Device) -> Result<TrainModel> {
    let (tokenizer, template) = read_tokenizer(path)?;
    let model = load_frozen(path, device)?;
    Ok(TrainModel {
        model,
        tokenizer,
        template,
        tuning: Tuning::Full(VarMap::new()),
        path: path.to_path_buf(),
    })
}

/// A trained model for generation: `tuned` is a run's `final/` folder, either a PEFT
/// adapter (put on the base model at `base_path`) or a whole Hugging Face model.
pub fn load_tuned(base_path: &Path, tuned: &Path, device: &Device) -> Result<TrainModel> {
    if !tuned.join("adapter_config.json").is_file() {
        return load_for_generation(tuned, device);
    }
    let mut base = load_for_generation(base_path, device)?;
    let adapters = LoraAdapters::load_peft(&mut base.model, tuned)?;
    base.tuning = Tuning::Lora(adapters);
    Ok(base)
}

/// A frozen f32 copy of the start model (the DPO reference of full fine-tuning).
pub fn load_frozen(path: &Path, device: &Device) -> Result<Model> {
    Ok(if path.is_dir() {
        Model::from_hf_dir(path, device, Trainable::No)?
    } else {
        Model::from_gguf(path, device, Precision::F32, Trainable::No)?
    })
}

impl TrainModel {
    pub fn parameters(&self) -> Result<Parameters> {
        Ok(Parameters::from_varmap(self.varmap())?)
    }

    pub fn varmap(&self) -> &VarMap {
        match &self.tuning {
            Tuning::Full(varmap) => varmap,
            Tuning::Lora(adapters) => adapters.varmap(),
        }
    }

    pub fn is_lora(&self) -> bool {
        matches!(self.tuning, Tuning::Lora(_))
    }

    /// Dropout on (with masks drawn from `step_seed`) or off.
    pub fn set_training(&self, on: bool, step_seed: u64) {
        if let Tuning::Lora(adapters) = &self.tuning {
            adapters.set_training(on, step_seed);
        }
    }

    /// Runs `work` on the base model (adapters switched off); `None` under full tuning,
    /// where the base is gone once training starts.
    pub fn with_base<T>(&self, work: impl FnOnce(&Model) -> Result<T>) -> Option<Result<T>> {
        let Tuning::Lora(adapters) = &self.tuning else {
            return None;
        };
        adapters.set_enabled(false);
        let result = work(&self.model);
        adapters.set_enabled(true);
        Some(result)
    }

    /// Writes the trainable weights into `dir`: a PEFT adapter folder under LoRA, a
    /// Hugging Face `model.safetensors` otherwise.
    pub fn save_weights(&self, dir: &Path, base_model: &str) -> Result<()> {
        match &self.tuning {
            Tuning::Lora(adapters) => adapters.save_peft(dir, base_model)?,
            Tuning::Full(varmap) => agora_model::checkpoint::save_varmap(varmap, &dir.join(FULL_WEIGHTS))?,
        }
        Ok(())
    }

    /// Restores weights written by [`TrainModel::save_weights`].
    pub fn load_weights(&self, dir: &Path) -> Result<()> {
        let file = dir.join(if self.is_lora() { ADAPTER_WEIGHTS } else { FULL_WEIGHTS });
        if !file.is_file() {
            return Err(TrainError::Other(format!("checkpoint {} lacks {}", dir.display(), file.display())));
        }
        let mut varmap = self.varmap().clone();
        varmap.load(&file).map_err(|error| {
            TrainError::Other(format!("{}: cannot restore weights: {error}", file.display()))
        })?;
        Ok(())
    }

    /// Writes a loadable model folder: the merged Hugging Face model (LoRA folded in when
    /// `merge`), or only the adapter; with the tokenizer either way.
    pub fn save_final(&mut self, dir: &Path, base_model: &str, merge: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
        match (&self.tuning, merge) {
            (Tuning::Lora(adapters), false) => adapters.save_peft(dir, base_model)?,
            (Tuning::Lora(adapters), true) => {
                adapters.merge(&mut self.model)?;
                self.model.save_hf(dir)?;
            }
            (Tuning::Full(_), _) => self.model.save_hf(dir)?,
        }
        self.tokenizer.save_folder(dir)?;
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Greedy replies to each prompt sent as a user message, in one batch, with dropout
    /// off: the samples a run logs and what `agora runs generate` prints.
    pub fn greedy_replies(&self, prompts: &[String], max_new_tokens: usize) -> Result<Vec<String>> {
        self.set_training(false, 0);
        let tokens = prompts
            .iter()
            .map(|prompt| {
                let text = self.template.render(&[Message::user(prompt.clone())], true)?;
                self.tokenizer.encode(&text, false)
            })
            .collect::<agora_model::Result<Vec<_>>>()?;
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, true);
        let options = GenerateOptions {
            eos_token_ids: self.tokenizer.eos_token_ids().to_vec(),
            decoder: Some(&decode),
            capture_attention: false,
        };
        let generations = generate(
            &self.model,
            &tokens,
            &SamplingConfig::greedy(max_new_tokens),
            &options,
            &mut |_, _| Control::Continue,
        )?;
        Ok(generations.into_iter().map(|generation| generation.text.unwrap_or_default()).collect())
    }

    /// Adds special tokens (PersonaGPT's) to the tokenizer and grows the token embeddings
    /// when the vocabulary outgrows them. New rows must be trained, so this needs full
    /// fine-tuning; only GPT-2 models can grow today.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        let ids = self.tokenizer.add_special_tokens(tokens)?;
        let needed = self.tokenizer.vocab_size();
        if needed <= self.model.vocab_size() {
            return Ok(ids);
        }
        let Tuning::Full(varmap) = &self.tuning else {
            return Err(TrainError::Other(format!(
                "the tokens {tokens:?} need {needed} embedding rows, the model has {}: new embeddings \
                 are trained only by full fine-tuning (remove [lora])",
                self.model.vocab_size()
            )));
        };
        match &mut self.model {
            Model::Gpt2(gpt2) => gpt2.resize_token_embeddings(needed, Trainable::Yes(varmap))?,
            Model::Llama(_) => {
                return Err(TrainError::Other(format!(
                    "growing a Llama model's embeddings to {needed} rows is not supported; use a GPT-2 model \
                     for the PersonaGPT layout"
                )));
            }
        }
        Ok(ids)
    }
}
