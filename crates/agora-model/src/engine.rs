//! A model with its tokenizer and chat template, loaded from one reference: what the
//! CLI (and later the backends) load to chat with, complete or score.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::generate::{Control, GenerateOptions, Generation, generate};
use crate::weights::{Model, Precision, Trainable};
use crate::{ChatTemplate, LanguageModel, Message, Result, SamplingConfig, Tokenizer};

/// A loaded model ready to generate.
#[derive(Debug)]
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub path: PathBuf,
}

/// What `agora model info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub architecture: &'static str,
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab_size: usize,
    pub context: usize,
    pub tied_embeddings: bool,
    pub tokenizer_vocab: usize,
    pub eos_token_ids: Vec<u32>,
    pub chat_template: &'static str,
}

impl Engine {
    /// Loads a Hugging Face folder or a GGUF file with its tokenizer and chat template
    /// (ChatML when the model has none; see [`ChatTemplate::is_fallback`]).
    pub fn load(path: &Path, device: &Device) -> Result<Engine> {
        let (model, tokenizer) = if path.is_dir() {
            (Model::load(path, device)?, Tokenizer::from_folder(path)?)
        } else {
            // One parse for both, the tokenizer first: the model frees the metadata before
            // reading its tensors, which keeps the peak memory of loading low.
            let gguf = crate::weights::read_gguf(path)?;
            let tokenizer = Tokenizer::from_gguf_content(path, &gguf.content)?;
            (Model::from_parsed_gguf(gguf, device, Precision::Quantized, Trainable::No)?, tokenizer)
        };
        let template = tokenizer.chat_template()?;
        Ok(Engine { model, tokenizer, template, path: path.to_path_buf() })
    }

    pub fn summary(&self) -> ModelSummary {
        let (architecture, layers, hidden_size, heads, kv_heads, tied_embeddings) = match &self.model {
            Model::Llama(llama) => {
                let config = llama.config();
                (
                    "llama",
                    config.layers,
                    config.hidden_size,
                    config.heads,
                    config.kv_heads,
                    config.tie_word_embeddings,
                )
            }
            Model::Gpt2(gpt2) => {
                let config = gpt2.config();
                (
                    "gpt2",
                    config.n_layer,
                    config.n_embd,
                    config.n_head,
                    config.n_head,
                    config.tie_word_embeddings,
                )
            }
        };
        ModelSummary {
            path: self.path.clone(),
            architecture,
            layers,
            hidden_size,
            heads,
            kv_heads,
            vocab_size: self.model.vocab_size(),
            context: self.model.max_context(),
            tied_embeddings,
            tokenizer_vocab: self.tokenizer.vocab_size(),
            eos_token_ids: self.tokenizer.eos_token_ids().to_vec(),
            chat_template: if self.template.is_fallback() { "ChatML (fallback)" } else { "from the model" },
        }
    }

    /// Token ids of `messages` rendered by the chat template, ready for the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        // The template writes the special tokens itself.
        self.tokenizer.encode(&text, false)
    }

    /// Generates a reply to each conversation (one batch), streaming text through
    /// `on_text(row, piece)`.
    pub fn chat(
        &self,
        conversations: &[Vec<Message>],
        config: &SamplingConfig,
        on_text: &mut dyn FnMut(usize, &str) -> Control,
    ) -> Result<Vec<Generation>> {
        let prompts =
            conversations.iter().map(|messages| self.chat_prompt(messages)).collect::<Result<Vec<_>>>()?;
        self.generate(&prompts, config, on_text)
    }

    /// Continues raw text prompts (no chat template).
    pub fn complete(
        &self,
        prompts: &[String],
        config: &SamplingConfig,
        on_text: &mut dyn FnMut(usize, &str) -> Control,
    ) -> Result<Vec<Generation>> {
        let prompts =
            prompts.iter().map(|text| self.tokenizer.encode(text, true)).collect::<Result<Vec<_>>>()?;
        self.generate(&prompts, config, on_text)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &SamplingConfig,
        on_text: &mut dyn FnMut(usize, &str) -> Control,
    ) -> Result<Vec<Generation>> {
        let decode = |tokens: &[u32]| self.tokenizer.decode(tokens, true);
        let options = GenerateOptions {
            eos_token_ids: self.tokenizer.eos_token_ids().to_vec(),
            decoder: Some(&decode),
            capture_attention: false,
        };
        let mut decoders: Vec<_> = prompts.iter().map(|_| self.tokenizer.incremental_decoder(true)).collect();
        let mut failure = None;
        let generations = generate(&self.model, prompts, config, &options, &mut |row, token| {
            if self.tokenizer.eos_token_ids().contains(&token) {
                return Control::Continue;
            }
            match decoders[row].step(token) {
                Ok(Some(piece)) => on_text(row, &piece),
                Ok(None) => Control::Continue,
                Err(error) => {
                    failure = Some(error);
                    Control::StopAll
                }
            }
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(generations)
    }
}

/// Sets how many threads candle's CPU kernels use (once per process, before any model
/// work). Returns false when the pool was already set up.
pub fn set_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_ok()
}

/// Runs `work` on the worker thread of rayon's global pool (the pool the CPU kernels use)
/// when that pool has one thread, and waits for it; with more threads, runs it in place.
///
/// Called from a thread outside the pool, each parallel kernel of a model step is handed
/// to a worker and waited for, and each handover wakes a sleeping thread, often on the
/// other CPU. On the pool's only worker, the step's sequential code and its kernels run
/// on one thread with nothing handed over. Measured on a 1-thread GPT-2 training step:
/// 1,552 context switches in a run of 4 steps before, 153 after, and wall time 1.07x the
/// step's CPU time instead of 1.3x on a shared virtual machine. With 2 threads the
/// handovers remain either way (the second worker sleeps between kernels); there,
/// moving the work into the pool gained nothing for training and slowed single-row
/// decoding (31-37 against 41-54 tok/s in alternating runs), so it stays in place.
/// Keep `work` to compute: a worker blocked on I/O or a channel holds up the pool.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() > 1 {
        return work();
    }
    rayon::scope(|_| work())
}
