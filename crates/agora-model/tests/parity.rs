//! Parity with Hugging Face transformers: logits and greedy continuations of tiny
//! random models made by scripts/goldens/make_model_goldens.py, the same models
//! re-packed as GGUF, and a check on the real default model when it is present.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agora_model::weights::{Model, Precision, Trainable};
use agora_model::{DType, Device, LanguageModel, Tensor};

const MODELS: [&str; 4] = ["llama", "llama3_rope", "qwen2", "gpt2"];
const TOLERANCE: f32 = 1e-4;

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name)
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(model_dir(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn ids(tensor: &Tensor) -> Tensor {
    tensor.to_dtype(DType::U32).unwrap()
}

fn load(name: &str) -> Model {
    Model::load(&model_dir(name), &Device::Cpu).unwrap()
}

/// Largest absolute difference of `actual` and `expected` (`[batch, seq, vocab]`) over
/// the positions where `mask` (`[batch, seq]`) is 1.
fn max_difference(actual: &Tensor, expected: &Tensor, mask: Option<&Tensor>) -> f32 {
    assert_eq!(actual.dims(), expected.dims());
    let actual = actual.to_vec3::<f32>().unwrap();
    let expected = expected.to_vec3::<f32>().unwrap();
    let mask = mask.map(|mask| mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap());
    let mut worst = 0f32;
    for (row, (actual_row, expected_row)) in actual.iter().zip(&expected).enumerate() {
        for (position, (a, e)) in actual_row.iter().zip(expected_row).enumerate() {
            if mask.as_ref().is_some_and(|mask| mask[row][position] == 0) {
                continue;
            }
            for (x, y) in a.iter().zip(e) {
                assert!(x.is_finite(), "non-finite logit at row {row}, position {position}");
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

fn check_logits(name: &str, model: &dyn LanguageModel, golden: &HashMap<String, Tensor>) {
    let logits = model.forward(&ids(&golden["input_ids"]), None, &mut model.new_cache()).unwrap();
    let difference = max_difference(&logits, &golden["logits"], None);
    assert!(difference < TOLERANCE, "{name}: logits differ by {difference}");
    for padding in ["right", "left"] {
        let mask = ids(&golden[&format!("{padding}_mask")]);
        let tokens = ids(&golden[&format!("{padding}_ids")]);
        let logits = model.forward(&tokens, Some(&mask), &mut model.new_cache()).unwrap();
        let expected = &golden[&format!("{padding}_logits")];
        let difference = max_difference(&logits, expected, Some(&mask));
        assert!(difference < TOLERANCE, "{name}: {padding}-padded logits differ by {difference}");
    }
}

fn argmax_last(logits: &Tensor) -> u32 {
    let (_, seq, _) = logits.dims3().unwrap();
    logits.get(0).unwrap().get(seq - 1).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

/// Greedy decoding with the key/value cache: the prompt in one call, then one token per
/// call.
fn greedy_cached(model: &dyn LanguageModel, prompt: &[u32], new_tokens: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut tokens = prompt.to_vec();
    let mut input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    for _ in 0..new_tokens {
        let logits = model.forward(&input, None, &mut cache).unwrap();
        let next = argmax_last(&logits);
        tokens.push(next);
        input = Tensor::new(&[[next]], &Device::Cpu).unwrap();
    }
    assert_eq!(cache.len, tokens.len() - 1);
    tokens
}

/// Greedy decoding recomputing the whole sequence at every step (no cache).
fn greedy_full(model: &dyn LanguageModel, prompt: &[u32], new_tokens: usize) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..new_tokens {
        let input = Tensor::new(tokens.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, None, &mut model.new_cache()).unwrap();
        tokens.push(argmax_last(&logits));
    }
    tokens
}

fn check_greedy(name: &str, model: &dyn LanguageModel, golden: &HashMap<String, Tensor>) {
    let prompt: Vec<u32> = ids(&golden["input_ids"]).get(0).unwrap().to_vec1().unwrap();
    let expected: Vec<u32> = ids(&golden["greedy"]).get(0).unwrap().to_vec1().unwrap();
    let new_tokens = expected.len() - prompt.len();
    assert_eq!(greedy_cached(model, &prompt, new_tokens), expected, "{name}: cached greedy");
    assert_eq!(greedy_full(model, &prompt, new_tokens), expected, "{name}: full greedy");
}

#[test]
fn safetensors_models_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let golden = golden(name);
        check_logits(name, &model, &golden);
        check_greedy(name, &model, &golden);
    }
}

#[test]
fn trainable_models_compute_the_same_logits() {
    for name in MODELS {
        let varmap = candle_nn::VarMap::new();
        let model = Model::from_hf_dir(&model_dir(name), &Device::Cpu, Trainable::Yes(&varmap)).unwrap();
        check_logits(name, &model, &golden(name));
        assert!(!varmap.all_vars().is_empty());
    }
}

#[test]
fn attention_is_captured_only_when_asked() {
    for name in MODELS {
        let model = load(name);
        let golden = golden(name);
        let tokens = ids(&golden["input_ids"]);
        let seq = tokens.dim(1).unwrap();
        let mut cache = model.new_cache();
        model.forward(&tokens, None, &mut cache).unwrap();
        assert!(cache.attention.is_none());

        let mut cache = model.new_cache().capture_attention();
        model.forward(&tokens.narrow(1, 0, seq - 1).unwrap(), None, &mut cache).unwrap();
        model.forward(&tokens.narrow(1, seq - 1, 1).unwrap(), None, &mut cache).unwrap();
        let captured = cache.attention.as_ref().unwrap();
        assert_eq!(captured.len(), 2, "{name}: one entry per forward call");
        assert_eq!(captured[0].len(), cache.layers.len());
        let prefill = &captured[0][0];
        let (batch, heads, queries, keys) = prefill.dims4().unwrap();
        assert_eq!((batch, queries, keys), (1, seq - 1, seq - 1), "{name}");
        assert_eq!(captured[1][1].dims4().unwrap(), (1, heads, 1, seq));
        // Rows are distributions, and the prefill's are causal.
        let sums = captured[1][1].sum(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|sum| (sum - 1.0).abs() < 1e-5), "{name}: {sums:?}");
        let first_row = prefill.get(0).unwrap().get(0).unwrap().get(0).unwrap();
        let first_row = first_row.to_vec1::<f32>().unwrap();
        assert!((first_row[0] - 1.0).abs() < 1e-6 && first_row[1..].iter().all(|&p| p == 0.0));
    }
}

mod gguf {
    //! The Llama golden model re-packed as GGUF the way llama.cpp's converter does it
    //! (q/k rows permuted for its interleaved rope, llama.cpp tensor names), written
    //! with candle's GGUF writer.

    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

    use super::*;

    /// llama.cpp's `permute`: per head, rows `(half, pair)` become `(pair, half)`.
    fn permute(weight: &Tensor, heads: usize) -> Tensor {
        let (rows, columns) = weight.dims2().unwrap();
        weight
            .reshape((heads, 2, rows / heads / 2, columns))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, columns))
            .unwrap()
    }

    /// Writes `name`'s safetensors as a GGUF file of `architecture` (`llama`: q/k
    /// permuted as llama.cpp's Llama converter does; `qwen2`: as stored); matrices in
    /// `dtype`, vectors in F32.
    pub fn write(name: &str, architecture: &str, dtype: GgmlDType, path: &Path) {
        let dir = model_dir(name);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap() as usize;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let permuted = architecture == "llama";
        let mut quantized = Vec::new();
        for (hf_name, tensor) in &tensors {
            let mut tensor = tensor.clone();
            if permuted && hf_name.ends_with("q_proj.weight") {
                tensor = permute(&tensor, heads);
            } else if permuted && hf_name.ends_with("k_proj.weight") {
                tensor = permute(&tensor, kv_heads);
            }
            let tensor_dtype = if tensor.rank() == 1 { GgmlDType::F32 } else { dtype };
            let gguf_name = agora_model::llama::gguf_name(hf_name);
            quantized.push((gguf_name, QTensor::quantize(&tensor, tensor_dtype).unwrap()));
        }
        let integer = |key: &str| Value::U32(config[key].as_u64().unwrap() as u32);
        let float = |value: &serde_json::Value| Value::F32(value.as_f64().unwrap() as f32);
        let key = |name: &str| format!("{architecture}.{name}");
        let metadata = vec![
            ("general.architecture".to_string(), Value::String(architecture.to_string())),
            (key("embedding_length"), integer("hidden_size")),
            (key("block_count"), integer("num_hidden_layers")),
            (key("attention.head_count"), integer("num_attention_heads")),
            (key("attention.head_count_kv"), integer("num_key_value_heads")),
            (key("feed_forward_length"), integer("intermediate_size")),
            (key("context_length"), integer("max_position_embeddings")),
            (key("rope.freq_base"), float(&config["rope_parameters"]["rope_theta"])),
            (key("attention.layer_norm_rms_epsilon"), float(&config["rms_norm_eps"])),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            quantized.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    }

    #[test]
    fn gguf_f32_matches_transformers() {
        let dir = tempfile::tempdir().unwrap();
        for (name, architecture) in [("llama", "llama"), ("qwen2", "qwen2")] {
            let path = dir.path().join(format!("{name}.gguf"));
            write(name, architecture, GgmlDType::F32, &path);
            let golden = golden(name);
            for precision in [Precision::F32, Precision::Quantized] {
                let model = Model::from_gguf(&path, &Device::Cpu, precision, Trainable::No).unwrap();
                check_logits(&format!("{name}.gguf"), &model, &golden);
                check_greedy(&format!("{name}.gguf"), &model, &golden);
            }
            // Trainable: dequantized variables under Hugging Face names, q/k un-permuted.
            let varmap = candle_nn::VarMap::new();
            let model =
                Model::from_gguf(&path, &Device::Cpu, Precision::Quantized, Trainable::Yes(&varmap)).unwrap();
            check_logits(&format!("{name}.gguf trainable"), &model, &golden);
            let vars = varmap.data().lock().unwrap();
            let original =
                candle_core::safetensors::load(model_dir(name).join("model.safetensors"), &Device::Cpu)
                    .unwrap();
            assert_eq!(vars.len(), original.len(), "{name}");
            for (tensor_name, tensor) in &original {
                let var = &vars[tensor_name];
                let difference = (var.as_tensor() - tensor).unwrap().abs().unwrap().flatten_all().unwrap();
                assert_eq!(difference.max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0, "{tensor_name}");
            }
        }
    }

    #[test]
    fn gguf_q8_0_is_close_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llama-q8_0.gguf");
        write("llama", "llama", GgmlDType::Q8_0, &path);
        let golden = golden("llama");
        let tokens = ids(&golden["input_ids"]);
        let logits = |precision| {
            let model = Model::from_gguf(&path, &Device::Cpu, precision, Trainable::No).unwrap();
            model.forward(&tokens, None, &mut model.new_cache()).unwrap()
        };
        let (quantized, dequantized) = (logits(Precision::Quantized), logits(Precision::F32));
        // Same 8-bit weights: the quantized kernels add 8-bit activations (Q8_0 rounding
        // costs a few percent here: random weights, logits within ±4.2).
        let kernels = max_difference(&quantized, &dequantized, None);
        // 8-bit weights against f32 ones, on logits that spread over several units.
        let weights = max_difference(&dequantized, &golden["logits"], None);
        eprintln!("Q8_0: kernels {kernels}, weights {weights}");
        assert!(kernels < 0.3, "Q8_0 kernels differ from dequantized weights by {kernels}");
        assert!(weights < 0.3, "Q8_0 weights move logits by {weights}");
    }
}

/// The real default model (git-ignored, fetched by the set-up step): loads, gives
/// finite logits, and answers a ChatML prompt with a plausible first token.
#[test]
fn default_model_runs_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let model = Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(model.vocab_size(), 49152);
    // "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    // tokenized with the model's own tokenizer.
    let prompt: Vec<u32> = vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, None, &mut model.new_cache()).unwrap();
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|value| value.is_finite()));
    let next = argmax_last(&logits);
    eprintln!("first answer token: {next}");
    // "The" (504) — any ordinary word token would do; control tokens would not.
    assert!(next > 16, "the answer starts with control token {next}");

    if std::env::var("AGORA_BENCH").as_deref() == Ok("1") {
        let tokens = greedy_cached(&model, &prompt, 24);
        eprintln!("greedy answer ids: {:?}", &tokens[prompt.len()..]);
        let start = std::time::Instant::now();
        model.forward(&input, None, &mut model.new_cache()).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("prefill: {:.1} tokens/s ({} tokens)", prompt.len() as f64 / seconds, prompt.len());
        let mut cache = model.new_cache();
        model.forward(&input, None, &mut cache).unwrap();
        let mut next = Tensor::new(&[[tokens[tokens.len() - 1]]], &Device::Cpu).unwrap();
        let steps = 64;
        let start = std::time::Instant::now();
        for _ in 0..steps {
            let logits = model.forward(&next, None, &mut cache).unwrap();
            next = Tensor::new(&[[argmax_last(&logits)]], &Device::Cpu).unwrap();
        }
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("decode: {:.1} tokens/s ({steps} tokens)", steps as f64 / seconds);
    }
}
