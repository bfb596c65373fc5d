//! GPT-2 (and the checkpoints built on it: DialoGPT, PersonaGPT): learned position
//! embeddings, pre-norm blocks with layer norms, `Conv1D` projections stored `[in, out]`
//! and an output head tied to the token embeddings, from a Hugging Face folder.

use std::path::Path;

use candle_core::{D, Device, Tensor};
use serde::Deserialize;

use crate::ops;
use crate::scoring::ScoringBatch;
use crate::weights::{Embedding, Linear, Trainable, WeightSource, read_config, register_var};
use crate::{Cache, LanguageModel, ModelError, Result};

/// `config.json` of a GPT-2 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    /// Width of the MLP; `None` means `4 * n_embd`.
    pub n_inner: Option<usize>,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".to_string()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// The exact, erf-based GELU.
    Gelu,
    Relu,
}

#[derive(Debug)]
struct Block {
    ln_1_weight: Tensor,
    ln_1_bias: Tensor,
    c_attn: Linear,
    c_proj: Linear,
    ln_2_weight: Tensor,
    ln_2_bias: Tensor,
    c_fc: Linear,
    mlp_c_proj: Linear,
}

/// A GPT-2 causal language model.
#[derive(Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    activation: Activation,
    /// `transformer.` in checkpoints saved from `GPT2LMHeadModel`, empty in the original
    /// OpenAI-converted ones.
    prefix: String,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f_weight: Tensor,
    ln_f_bias: Tensor,
    lm_head: Linear,
    /// Whether `lm_head` is the token embedding (rebuilt after a resize).
    tied: bool,
    device: Device,
}

impl Gpt2 {
    /// Loads `config.json` and the safetensors of a Hugging Face folder (f32).
    pub fn from_hf_dir(dir: &Path, device: &Device, trainable: Trainable) -> Result<Gpt2> {
        let config_path = dir.join("config.json");
        let config: Gpt2Config = read_config(&config_path)?;
        let source = WeightSource::from_hf_dir(dir, device, trainable)?;
        Gpt2::new(config, &source).map_err(|error| match error {
            ModelError::Config(message) => ModelError::file(config_path, message),
            other => other,
        })
    }

    /// Builds the model from tensors named as in Hugging Face checkpoints.
    pub fn new(config: Gpt2Config, source: &WeightSource) -> Result<Gpt2> {
        let activation = match config.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => {
                return Err(ModelError::Config(format!(
                    "activation_function `{other}` is not supported (gelu_new, gelu, relu)"
                )));
            }
        };
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            return Err(ModelError::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head
            )));
        }
        let prefix = if source.contains("transformer.wte.weight") { "transformer." } else { "" }.to_string();
        let hidden = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * hidden);
        let wte = source.embedding(&format!("{prefix}wte.weight"), config.vocab_size, hidden)?;
        let wpe = source.embedding(&format!("{prefix}wpe.weight"), config.n_positions, hidden)?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let name = |part: &str| format!("{prefix}h.{layer}.{part}");
            let conv1d = |part: &str, input: usize, output: usize| {
                source.conv1d(&name(&format!("{part}.weight")), input, output, &name(&format!("{part}.bias")))
            };
            blocks.push(Block {
                ln_1_weight: source.tensor(&name("ln_1.weight"), &[hidden])?,
                ln_1_bias: source.tensor(&name("ln_1.bias"), &[hidden])?,
                c_attn: conv1d("attn.c_attn", hidden, 3 * hidden)?,
                c_proj: conv1d("attn.c_proj", hidden, hidden)?,
                ln_2_weight: source.tensor(&name("ln_2.weight"), &[hidden])?,
                ln_2_bias: source.tensor(&name("ln_2.bias"), &[hidden])?,
                c_fc: conv1d("mlp.c_fc", hidden, inner)?,
                mlp_c_proj: conv1d("mlp.c_proj", inner, hidden)?,
            });
        }
        let ln_f_weight = source.tensor(&format!("{prefix}ln_f.weight"), &[hidden])?;
        let ln_f_bias = source.tensor(&format!("{prefix}ln_f.bias"), &[hidden])?;
        let tied = config.tie_word_embeddings || !source.contains("lm_head.weight");
        let lm_head = if tied {
            wte.as_linear()?
        } else {
            source.linear(
                "lm_head.weight",
                config.vocab_size,
                hidden,
                None,
                crate::weights::RowOrder::AsStored,
            )?
        };
        Ok(Gpt2 {
            config,
            activation,
            prefix,
            wte,
            wpe,
            blocks,
            ln_f_weight,
            ln_f_bias,
            lm_head,
            tied,
            device: source.device().clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Grows (or shrinks) the vocabulary to `new_vocab` rows, e.g. after adding
    /// PersonaGPT's special tokens. New rows are the mean of the old embeddings: the
    /// mean of transformers' `mean_resizing` without its random covariance term, so
    /// resizing is deterministic and new tokens start as an "average" token. With
    /// `Trainable::Yes` the resized table replaces the variable in the map.
    pub fn resize_token_embeddings(&mut self, new_vocab: usize, trainable: Trainable) -> Result<()> {
        let Embedding::Dense(table) = &self.wte else {
            return Err(ModelError::Config(
                "cannot resize quantized embeddings; load the model in f32".to_string(),
            ));
        };
        let resized = resize_rows(table, new_vocab)?;
        let name = format!("{}wte.weight", self.prefix);
        let resized = match trainable {
            Trainable::Yes(varmap) => register_var(varmap, &name, resized)?,
            Trainable::No => resized,
        };
        self.wte = Embedding::Dense(resized);
        if self.tied {
            self.lm_head = self.wte.as_linear()?;
        } else if let crate::weights::Weight::Dense(head) = &self.lm_head.weight {
            let resized = resize_rows(head, new_vocab)?;
            let resized = match trainable {
                Trainable::Yes(varmap) => register_var(varmap, "lm_head.weight", resized)?,
                Trainable::No => resized,
            };
            self.lm_head = Linear::new(crate::weights::Weight::Dense(resized), None);
        }
        self.config.vocab_size = new_vocab;
        Ok(())
    }

    fn attention(
        &self,
        layer: usize,
        block: &Block,
        xs: &Tensor,
        mask: Option<&Tensor>,
        layer_cache: &mut Option<(Tensor, Tensor)>,
        keep_cache: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (batch, seq, hidden) = xs.dims3()?;
        let heads = self.config.n_head;
        let head_dim = hidden / heads;
        let qkv = block.c_attn.forward(xs)?;
        // ops::attention scales by 1/sqrt(head_dim); GPT-2 can switch that off or add a
        // per-layer factor, applied to the queries.
        let mut correction = 1.0;
        if !self.config.scale_attn_weights {
            correction *= (head_dim as f64).sqrt();
        }
        if self.config.scale_attn_by_inverse_layer_idx {
            correction /= (layer + 1) as f64;
        }
        if !keep_cache && qkv.track_op() && crate::fused::applies(&[&qkv]) {
            // A training forward: attention is one node of the graph, and nothing is
            // cached or recorded.
            let scale = correction / (head_dim as f64).sqrt();
            let output = crate::fused::packed_attention(&qkv, heads, scale, mask)?;
            return Ok((block.c_proj.forward(&output)?, None));
        }
        let split = |index: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(D::Minus1, index * hidden, hidden)?
                .reshape((batch, seq, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut queries = split(0)?;
        let (keys, values) = match layer_cache.take() {
            Some((past_keys, past_values)) => {
                (Tensor::cat(&[past_keys, split(1)?], 2)?, Tensor::cat(&[past_values, split(2)?], 2)?)
            }
            None => (split(1)?, split(2)?),
        };
        *layer_cache = Some((keys.clone(), values.clone()));
        if correction != 1.0 {
            queries = (queries * correction)?;
        }
        let (output, probabilities) = ops::attention(&queries, &keys, &values, mask)?;
        let output = output.transpose(1, 2)?.reshape((batch, seq, hidden))?;
        Ok((block.c_proj.forward(&output)?, Some(probabilities)))
    }

    fn mlp(&self, block: &Block, xs: &Tensor) -> Result<Tensor> {
        let inner = block.c_fc.forward(xs)?;
        let activated = match self.activation {
            Activation::GeluTanh => ops::gelu_new(&inner)?,
            Activation::Gelu => inner.gelu_erf()?,
            Activation::Relu => inner.relu()?,
        };
        block.mlp_c_proj.forward(&activated)
    }
}

/// `table` with `rows` rows: truncated, or extended with copies of its mean row.
fn resize_rows(table: &Tensor, rows: usize) -> Result<Tensor> {
    let (old_rows, width) = table.dims2()?;
    if rows <= old_rows {
        return Ok(table.narrow(0, 0, rows)?.contiguous()?);
    }
    let mean = table.detach().mean_keepdim(0)?;
    let extra = mean.broadcast_as((rows - old_rows, width))?;
    Ok(Tensor::cat(&[&table.detach(), &extra.contiguous()?], 0)?)
}

impl Gpt2 {
    /// The hidden states after the last block (before the final layer norm),
    /// `[batch, seq, hidden]`, with `cache` extended. Without `keep_cache` the caller
    /// drops `cache` afterwards (a training forward): a tracked forward then runs
    /// attention as one fused node and caches nothing.
    fn last_hidden(
        &self,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Cache,
        keep_cache: bool,
    ) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        let past = cache.len;
        if cache.layers.len() != self.blocks.len() {
            return Err(ModelError::Config(format!(
                "cache has {} layers, the model {}",
                cache.layers.len(),
                self.blocks.len()
            )));
        }
        if past + seq > self.config.n_positions {
            return Err(ModelError::Config(format!(
                "{} tokens exceed GPT-2's {} learned positions",
                past + seq,
                self.config.n_positions
            )));
        }
        let positions = ops::positions(batch, seq, past, mask, &self.device)?;
        let attention_mask = ops::attention_mask(batch, seq, past, mask, &self.device)?;
        let eps = self.config.layer_norm_epsilon;
        let mut hidden = (self.wte.forward(tokens)? + self.wpe.forward(&positions)?)?;
        let mut captured = Vec::new();
        let keep = keep_cache || cache.attention.is_some();
        for (layer, (block, layer_cache)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            let normed = ops::layer_norm(&hidden, &block.ln_1_weight, &block.ln_1_bias, eps)?;
            let (attended, probabilities) =
                self.attention(layer, block, &normed, attention_mask.as_ref(), layer_cache, keep)?;
            hidden = (hidden + attended)?;
            let normed = ops::layer_norm(&hidden, &block.ln_2_weight, &block.ln_2_bias, eps)?;
            hidden = (&hidden + self.mlp(block, &normed)?)?;
            if let (Some(_), Some(probabilities)) = (&cache.attention, probabilities) {
                captured.push(probabilities);
            }
        }
        cache.len += seq;
        if let Some(attention) = &mut cache.attention {
            attention.push(captured);
        }
        Ok(hidden)
    }
}

/// The model's layers by Hugging Face name, for LoRA and for saving. Names are those of
/// `GPT2LMHeadModel` (`transformer.` first) whichever prefix the checkpoint had.
impl Gpt2 {
    /// The `Conv1D` projections of every block, in model order: `attn.c_attn`,
    /// `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` (the tied output head is not one).
    pub fn linear_layers_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut layers = Vec::with_capacity(4 * self.blocks.len());
        for (index, block) in self.blocks.iter_mut().enumerate() {
            let name = |part: &str| format!("transformer.h.{index}.{part}");
            layers.push((name("attn.c_attn"), &mut block.c_attn));
            layers.push((name("attn.c_proj"), &mut block.c_proj));
            layers.push((name("mlp.c_fc"), &mut block.c_fc));
            layers.push((name("mlp.c_proj"), &mut block.mlp_c_proj));
        }
        layers
    }

    /// Every tensor under the name `GPT2LMHeadModel.save_pretrained` gives it.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let table = |embedding: &Embedding, name: &str| match embedding {
            Embedding::Dense(table) => Ok((name.to_string(), table.clone())),
            _ => Err(ModelError::Config(format!("`{name}` is quantized and cannot be saved"))),
        };
        let mut tensors =
            vec![table(&self.wte, "transformer.wte.weight")?, table(&self.wpe, "transformer.wpe.weight")?];
        for (index, block) in self.blocks.iter().enumerate() {
            let name = |part: &str| format!("transformer.h.{index}.{part}");
            tensors.push((name("ln_1.weight"), block.ln_1_weight.clone()));
            tensors.push((name("ln_1.bias"), block.ln_1_bias.clone()));
            tensors.push((name("ln_2.weight"), block.ln_2_weight.clone()));
            tensors.push((name("ln_2.bias"), block.ln_2_bias.clone()));
            for (part, linear) in [
                ("attn.c_attn", &block.c_attn),
                ("attn.c_proj", &block.c_proj),
                ("mlp.c_fc", &block.c_fc),
                ("mlp.c_proj", &block.mlp_c_proj),
            ] {
                crate::weights::push_linear(&mut tensors, &name(part), linear)?;
            }
        }
        tensors.push(("transformer.ln_f.weight".to_string(), self.ln_f_weight.clone()));
        tensors.push(("transformer.ln_f.bias".to_string(), self.ln_f_bias.clone()));
        if !self.tied {
            crate::weights::push_linear(&mut tensors, "lm_head", &self.lm_head)?;
        }
        Ok(tensors)
    }
}

impl LanguageModel for Gpt2 {
    fn forward(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        // Inside the pool: every parallel kernel below then runs on its workers (or
        // inline with one thread) instead of waking them from outside on every call.
        rayon::scope(|_| {
            let hidden = self.last_hidden(tokens, mask, cache, true)?;
            let eps = self.config.layer_norm_epsilon;
            let hidden = ops::layer_norm(&hidden, &self.ln_f_weight, &self.ln_f_bias, eps)?;
            self.lm_head.forward(&hidden)
        })
    }

    /// Only the last position goes through the final layer norm and the output layer.
    fn forward_last(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        // Inside the pool: every parallel kernel below then runs on its workers (or
        // inline with one thread) instead of waking them from outside on every call.
        rayon::scope(|_| {
            let hidden = crate::lm::last_position(&self.last_hidden(tokens, mask, cache, true)?)?;
            let eps = self.config.layer_norm_epsilon;
            let hidden = ops::layer_norm(&hidden, &self.ln_f_weight, &self.ln_f_bias, eps)?;
            self.lm_head.forward(&hidden)
        })
    }

    fn target_logprobs(&self, batch: &ScoringBatch) -> Result<Tensor> {
        rayon::scope(|_| {
            let hidden = self.last_hidden(&batch.tokens, Some(&batch.mask), &mut self.new_cache(), false)?;
            let eps = self.config.layer_norm_epsilon;
            let hidden =
                ops::layer_norm(&batch.scored_rows(&hidden)?, &self.ln_f_weight, &self.ln_f_bias, eps)?;
            self.lm_head.target_logprobs(&hidden, batch.target_ids())
        })
    }

    fn new_cache(&self) -> Cache {
        Cache::new(self.blocks.len())
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.n_positions
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
