//! The Llama family (Llama 2 and 3.x, SmolLM2, TinyLlama, Mistral without sliding
//! windows, Qwen2 with its q/k/v biases): RMS norms, rotary positions, grouped-query
//! attention and a SiLU-gated MLP, from a Hugging Face folder or a GGUF file.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::ops::{self, RopeScaling, Rotary};
use crate::scoring::ScoringBatch;
use crate::weights::{
    Embedding, Gguf, Linear, ParallelLinear, Precision, RowOrder, Trainable, WeightSource, read_config,
    read_gguf,
};
use crate::{Cache, LanguageModel, ModelError, Result};

/// `config.json` of a Llama-family checkpoint, as Hugging Face writes it (both the
/// `rope_theta` + `rope_scaling` keys of transformers 4 and the `rope_parameters` of
/// transformers 5).
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub attention_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// `rope_scaling` / `rope_parameters` of a Hugging Face config.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

/// The resolved shape and settings of a Llama-family model, whichever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// Resolves a parsed `config.json`; `path` names it in errors.
    pub fn from_hf(config: &HfLlamaConfig, path: &Path) -> Result<LlamaConfig> {
        let invalid = |message: String| ModelError::file(path, message);
        if let Some(activation) = &config.hidden_act
            && activation != "silu"
        {
            return Err(invalid(format!("hidden_act `{activation}` is not supported (only silu)")));
        }
        if config.num_attention_heads == 0 {
            return Err(invalid("num_attention_heads is 0".to_string()));
        }
        let kv_heads = config.num_key_value_heads.unwrap_or(config.num_attention_heads);
        if kv_heads == 0 || !config.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv_heads}",
                config.num_attention_heads
            )));
        }
        let head_dim = config.head_dim.unwrap_or(config.hidden_size / config.num_attention_heads);
        let parameters = config.rope_parameters.as_ref().or(config.rope_scaling.as_ref());
        let rope_theta = config
            .rope_theta
            .or_else(|| parameters.and_then(|parameters| parameters.rope_theta))
            .unwrap_or(10000.0);
        let rope_scaling = match parameters {
            Some(parameters) => rope_scaling(parameters).map_err(invalid)?,
            None => RopeScaling::None,
        };
        let is_qwen2 = config.model_type.as_deref() == Some("qwen2")
            || config.architectures.iter().any(|name| name == "Qwen2ForCausalLM");
        Ok(LlamaConfig {
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            kv_heads,
            head_dim,
            max_positions: config.max_position_embeddings,
            rms_norm_eps: config.rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: config.tie_word_embeddings,
            qkv_bias: config.attention_bias.unwrap_or(is_qwen2),
        })
    }

    /// Reads the settings from GGUF metadata (`<arch>.embedding_length`, ...) and the
    /// tensor directory (vocabulary size, tied head, biases, Llama 3 `rope_freqs`).
    pub fn from_gguf(gguf: &mut Gguf) -> Result<LlamaConfig> {
        let arch = gguf.architecture()?;
        let key = |name: &str| format!("{arch}.{name}");
        let hidden_size = gguf.usize(&key("embedding_length"))?;
        let heads = gguf.usize(&key("attention.head_count"))?;
        if heads == 0 {
            return Err(ModelError::file(&gguf.path, format!("{} is 0", key("attention.head_count"))));
        }
        let kv_heads = if gguf.has(&key("attention.head_count_kv")) {
            gguf.usize(&key("attention.head_count_kv"))?
        } else {
            heads
        };
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(ModelError::file(
                &gguf.path,
                format!("{heads} attention heads are not a multiple of {kv_heads} key/value heads"),
            ));
        }
        let head_dim = if gguf.has(&key("attention.key_length")) {
            gguf.usize(&key("attention.key_length"))?
        } else {
            hidden_size / heads
        };
        let vocab_size = gguf.tensor_dims("token_embd.weight")?.first().copied().unwrap_or(0);
        let rope_theta =
            if gguf.has(&key("rope.freq_base")) { gguf.f64(&key("rope.freq_base"))? } else { 10000.0 };
        let rope_scaling = if gguf.content.tensor_infos.contains_key("rope_freqs.weight") {
            let factors = gguf.dense("rope_freqs.weight", &Device::Cpu)?.flatten_all()?;
            RopeScaling::Factors(factors.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
        } else if gguf.has(&key("rope.scaling.type")) && gguf.string(&key("rope.scaling.type"))? == "linear" {
            RopeScaling::Linear { factor: gguf.f64(&key("rope.scaling.factor"))? }
        } else {
            RopeScaling::None
        };
        let rms_norm_eps = if gguf.has(&key("attention.layer_norm_rms_epsilon")) {
            gguf.f64(&key("attention.layer_norm_rms_epsilon"))?
        } else {
            1e-5
        };
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: gguf.usize(&key("feed_forward_length"))?,
            layers: gguf.usize(&key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            max_positions: gguf.usize(&key("context_length"))?,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: !gguf.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: gguf.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        })
    }
}

fn rope_scaling(parameters: &RopeParameters) -> Result<RopeScaling, String> {
    let kind = parameters.rope_type.as_deref().or(parameters.kind.as_deref()).unwrap_or("default");
    let factor = || parameters.factor.ok_or_else(|| format!("rope scaling `{kind}` needs `factor`"));
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: parameters
                .low_freq_factor
                .ok_or("rope scaling `llama3` needs `low_freq_factor`")?,
            high_freq_factor: parameters
                .high_freq_factor
                .ok_or("rope scaling `llama3` needs `high_freq_factor`")?,
            original_max_position_embeddings: parameters
                .original_max_position_embeddings
                .ok_or("rope scaling `llama3` needs `original_max_position_embeddings`")?,
        }),
        other => Err(format!("rope scaling type `{other}` is not supported (default, linear, llama3)")),
    }
}

/// Hugging Face tensor names -> llama.cpp's GGUF names.
pub fn gguf_name(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".to_string(),
        "model.norm.weight" => return "output_norm.weight".to_string(),
        "lm_head.weight" => return "output.weight".to_string(),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return name.to_string();
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return name.to_string();
    };
    let parts = [
        ("input_layernorm.", "attn_norm."),
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
    ];
    for (hugging_face, gguf) in parts {
        if let Some(suffix) = part.strip_prefix(hugging_face) {
            return format!("blk.{layer}.{gguf}{suffix}");
        }
    }
    name.to_string()
}

#[derive(Debug)]
struct Block {
    input_norm: Tensor,
    /// q, k and v projections.
    qkv: ParallelLinear,
    o_proj: Linear,
    post_attention_norm: Tensor,
    /// Gate and up projections.
    gate_up: ParallelLinear,
    down_proj: Linear,
}

/// A Llama-family causal language model.
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rotary: Rotary,
    device: Device,
}

impl Llama {
    /// Loads `config.json` and the safetensors of a Hugging Face folder (f32).
    pub fn from_hf_dir(dir: &Path, device: &Device, trainable: Trainable) -> Result<Llama> {
        let config_path = dir.join("config.json");
        let hf_config: HfLlamaConfig = read_config(&config_path)?;
        let config = LlamaConfig::from_hf(&hf_config, &config_path)?;
        let source = WeightSource::from_hf_dir(dir, device, trainable)?;
        Llama::new(config, &source, false)
    }

    /// Loads a GGUF file (architecture `llama` or `qwen2`), quantized or dequantized to
    /// f32 (always f32 when trainable).
    pub fn from_gguf(
        path: &Path,
        device: &Device,
        precision: Precision,
        trainable: Trainable,
    ) -> Result<Llama> {
        Llama::from_gguf_parsed(read_gguf(path)?, device, precision, trainable)
    }

    pub(crate) fn from_gguf_parsed(
        mut gguf: Gguf,
        device: &Device,
        precision: Precision,
        trainable: Trainable,
    ) -> Result<Llama> {
        let architecture = gguf.architecture()?;
        if architecture != "llama" && architecture != "qwen2" {
            return Err(ModelError::file(
                &gguf.path,
                format!("GGUF architecture `{architecture}` is not a Llama-family model"),
            ));
        }
        let config = LlamaConfig::from_gguf(&mut gguf)?;
        // The metadata (mostly the tokenizer's vocabulary and merges, several MB of small
        // strings) is not needed for the tensors: freeing it first lowers the peak.
        gguf.content.metadata = Default::default();
        crate::memory::release_free_heap();
        // Only llama.cpp's Llama converter permutes q/k for its interleaved rope.
        let permuted_qk = architecture == "llama";
        let source = WeightSource::from_gguf(gguf, device, precision, trainable, gguf_name);
        Llama::new(config, &source, permuted_qk)
    }

    /// Builds the model from tensors named as in Hugging Face checkpoints.
    pub fn new(config: LlamaConfig, source: &WeightSource, permuted_qk: bool) -> Result<Llama> {
        let hidden = config.hidden_size;
        let query_width = config.heads * config.head_dim;
        let key_width = config.kv_heads * config.head_dim;
        let embed_tokens = source.embedding("model.embed_tokens.weight", config.vocab_size, hidden)?;
        let row_order = |heads: usize| {
            if permuted_qk { RowOrder::LlamaCppRope { heads } } else { RowOrder::AsStored }
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            let prefix = format!("model.layers.{layer}");
            let linear = |name: &str, out: usize, input: usize, bias: bool, order: RowOrder| {
                let weight = format!("{prefix}.{name}.weight");
                let bias_name = format!("{prefix}.{name}.bias");
                source.linear(&weight, out, input, bias.then_some(bias_name.as_str()), order)
            };
            let bias = config.qkv_bias;
            blocks.push(Block {
                input_norm: source.tensor(&format!("{prefix}.input_layernorm.weight"), &[hidden])?,
                qkv: ParallelLinear::new(vec![
                    linear("self_attn.q_proj", query_width, hidden, bias, row_order(config.heads))?,
                    linear("self_attn.k_proj", key_width, hidden, bias, row_order(config.kv_heads))?,
                    linear("self_attn.v_proj", key_width, hidden, bias, RowOrder::AsStored)?,
                ])?,
                o_proj: linear("self_attn.o_proj", hidden, query_width, false, RowOrder::AsStored)?,
                post_attention_norm: source
                    .tensor(&format!("{prefix}.post_attention_layernorm.weight"), &[hidden])?,
                gate_up: ParallelLinear::new(vec![
                    linear("mlp.gate_proj", config.intermediate_size, hidden, false, RowOrder::AsStored)?,
                    linear("mlp.up_proj", config.intermediate_size, hidden, false, RowOrder::AsStored)?,
                ])?,
                down_proj: linear(
                    "mlp.down_proj",
                    hidden,
                    config.intermediate_size,
                    false,
                    RowOrder::AsStored,
                )?,
            });
        }
        let norm = source.tensor("model.norm.weight", &[hidden])?;
        // Some checkpoints say "untied" yet ship no lm_head (and GGUF omits `output`
        // when tied): fall back to the embedding whenever the head is absent.
        let lm_head = if config.tie_word_embeddings || !source.contains("lm_head.weight") {
            embed_tokens.as_linear()?
        } else {
            source.linear("lm_head.weight", config.vocab_size, hidden, None, RowOrder::AsStored)?
        };
        let rotary = Rotary::new(config.head_dim, config.rope_theta, &config.rope_scaling, source.device())?;
        Ok(Llama { config, embed_tokens, blocks, norm, lm_head, rotary, device: source.device().clone() })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn attention(
        &self,
        block: &Block,
        xs: &Tensor,
        rotary: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        cache: &mut Cache,
        layer: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (batch, seq, _) = xs.dims3()?;
        let config = &self.config;
        let heads = |projected: &Tensor, count: usize| -> Result<Tensor> {
            Ok(projected.reshape((batch, seq, count, config.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let [queries, keys, values] = <[Tensor; 3]>::try_from(block.qkv.forward(xs)?)
            .map_err(|_| ModelError::Config("the q/k/v projections gave other than 3 outputs".into()))?;
        let queries = heads(&queries, config.heads)?;
        let keys = heads(&keys, config.kv_heads)?;
        let values = heads(&values, config.kv_heads)?;
        let queries = ops::apply_rotary(&queries, &rotary.0, &rotary.1)?;
        let keys = ops::apply_rotary(&keys, &rotary.0, &rotary.1)?;
        let (keys, values) = cache.append(layer, keys, values)?;
        let (output, probabilities) = ops::attention(&queries, &keys, &values, mask)?;
        let output = output.transpose(1, 2)?.reshape((batch, seq, config.heads * config.head_dim))?;
        Ok((block.o_proj.forward(&output)?, probabilities))
    }

    fn mlp(&self, block: &Block, xs: &Tensor) -> Result<Tensor> {
        let [gate, up] = <[Tensor; 2]>::try_from(block.gate_up.forward(xs)?)
            .map_err(|_| ModelError::Config("the gate/up projections gave other than 2 outputs".into()))?;
        let gate = ops::silu(&gate)?;
        block.down_proj.forward(&(gate * up)?)
    }
}

impl Llama {
    /// The hidden states after the last block (before the final norm),
    /// `[batch, seq, hidden]`, with `cache` extended.
    fn last_hidden(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        let past = cache.len;
        if cache.layers.len() != self.blocks.len() {
            return Err(ModelError::Config(format!(
                "cache has {} layers, the model {}",
                cache.layers.len(),
                self.blocks.len()
            )));
        }
        let positions = ops::positions(batch, seq, past, mask, &self.device)?;
        let rotary = self.rotary.tables(&positions)?;
        let attention_mask = ops::attention_mask(batch, seq, past, mask, &self.device)?;
        let eps = self.config.rms_norm_eps;
        let mut hidden = self.embed_tokens.forward(tokens)?;
        let mut captured = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let normed = ops::rms_norm(&hidden, &block.input_norm, eps)?;
            let (attended, probabilities) =
                self.attention(block, &normed, &rotary, attention_mask.as_ref(), cache, layer)?;
            hidden = (hidden + attended)?;
            let normed = ops::rms_norm(&hidden, &block.post_attention_norm, eps)?;
            hidden = (&hidden + self.mlp(block, &normed)?)?;
            if cache.attention.is_some() {
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

impl LanguageModel for Llama {
    fn forward(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        // Inside the pool: every parallel kernel below then runs on its workers (or
        // inline with one thread) instead of waking them from outside on every call.
        rayon::scope(|_| {
            let hidden = self.last_hidden(tokens, mask, cache)?;
            let hidden = ops::rms_norm(&hidden, &self.norm, self.config.rms_norm_eps)?;
            self.lm_head.forward(&hidden)
        })
    }

    /// Only the last position goes through the final norm and the output layer (a fifth
    /// of this model's work per token for SmolLM2-135M).
    fn forward_last(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        // Inside the pool: every parallel kernel below then runs on its workers (or
        // inline with one thread) instead of waking them from outside on every call.
        rayon::scope(|_| {
            let hidden = crate::lm::last_position(&self.last_hidden(tokens, mask, cache)?)?;
            let hidden = ops::rms_norm(&hidden, &self.norm, self.config.rms_norm_eps)?;
            self.lm_head.forward(&hidden)
        })
    }

    fn target_logprobs(&self, batch: &ScoringBatch) -> Result<Tensor> {
        rayon::scope(|_| {
            let hidden = self.last_hidden(&batch.tokens, Some(&batch.mask), &mut self.new_cache())?;
            let hidden = ops::rms_norm(&batch.scored_rows(&hidden)?, &self.norm, self.config.rms_norm_eps)?;
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
        self.config.max_positions
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// The model's layers by Hugging Face name, for LoRA and for saving.
impl Llama {
    /// The projections of every block, in model order: `self_attn.{q,k,v,o}_proj`,
    /// `mlp.{gate,up,down}_proj` (the output head is not one). q/k rows are in Hugging
    /// Face order even for a GGUF file (undone at load). An error when q/k/v or gate/up
    /// were fused into one quantized matrix at load.
    pub fn linear_layers_mut(&mut self) -> Result<Vec<(String, &mut Linear)>> {
        let mut layers = Vec::with_capacity(7 * self.blocks.len());
        for (index, block) in self.blocks.iter_mut().enumerate() {
            let name = |part: &str| format!("model.layers.{index}.{part}");
            let (ParallelLinear::Separate(qkv), ParallelLinear::Separate(gate_up)) =
                (&mut block.qkv, &mut block.gate_up)
            else {
                return Err(ModelError::Config(
                    "the weights are quantized (q/k/v fused into one matrix); load the model with \
                     precision f32 for LoRA, merging or saving"
                        .to_string(),
                ));
            };
            for (part, linear) in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].iter().zip(qkv)
            {
                layers.push((name(part), linear));
            }
            layers.push((name("self_attn.o_proj"), &mut block.o_proj));
            for (part, linear) in ["mlp.gate_proj", "mlp.up_proj"].iter().zip(gate_up) {
                layers.push((name(part), linear));
            }
            layers.push((name("mlp.down_proj"), &mut block.down_proj));
        }
        Ok(layers)
    }

    /// Every tensor under the name `LlamaForCausalLM.save_pretrained` gives it (no
    /// `lm_head.weight` when the head is the embedding).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let Embedding::Dense(embed_tokens) = &self.embed_tokens else {
            return Err(ModelError::Config(
                "the embeddings are quantized; load the model with precision f32 to save it".to_string(),
            ));
        };
        let mut tensors = vec![("model.embed_tokens.weight".to_string(), embed_tokens.clone())];
        for (index, block) in self.blocks.iter().enumerate() {
            let name = |part: &str| format!("model.layers.{index}.{part}");
            tensors.push((name("input_layernorm.weight"), block.input_norm.clone()));
            tensors.push((name("post_attention_layernorm.weight"), block.post_attention_norm.clone()));
            let (ParallelLinear::Separate(qkv), ParallelLinear::Separate(gate_up)) =
                (&block.qkv, &block.gate_up)
            else {
                return Err(ModelError::Config(
                    "the weights are quantized; load the model with precision f32 to save it".to_string(),
                ));
            };
            let mut parts: Vec<(&str, &Linear)> =
                ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].into_iter().zip(qkv).collect();
            parts.push(("self_attn.o_proj", &block.o_proj));
            parts.extend(["mlp.gate_proj", "mlp.up_proj"].into_iter().zip(gate_up));
            parts.push(("mlp.down_proj", &block.down_proj));
            for (part, linear) in parts {
                crate::weights::push_linear(&mut tensors, &name(part), linear)?;
            }
        }
        tensors.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.config.tie_word_embeddings {
            crate::weights::push_linear(&mut tensors, "lm_head", &self.lm_head)?;
        }
        Ok(tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names() {
        for (hugging_face, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias"),
            ("model.layers.12.mlp.down_proj.weight", "blk.12.ffn_down.weight"),
            ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(gguf_name(hugging_face), gguf);
        }
    }

    #[test]
    fn transformers_4_rope_keys() {
        let json = r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 64, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let parsed: HfLlamaConfig = serde_json::from_str(json).unwrap();
        let config = LlamaConfig::from_hf(&parsed, Path::new("config.json")).unwrap();
        assert_eq!(config.rope_theta, 500000.0);
        assert_eq!(config.head_dim, 4);
        assert!(matches!(config.rope_scaling, RopeScaling::Llama3 { factor: 32.0, .. }));
        assert!(!config.qkv_bias);
    }
}
