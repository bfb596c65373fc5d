//! Broken model files give an error naming the file and the tensor or field at fault,
//! never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agora_model::weights::{Model, Precision, Trainable};
use agora_model::{Device, LanguageModel, ModelError, Tensor};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name)
}

/// A temporary copy of a golden model folder, for damaging.
fn copy_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn save(dir: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

/// Loading `path` fails with an error whose message holds every one of `expected`.
fn check(path: &Path, expected: &[&str]) {
    let error = match Model::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(error) => error,
    };
    assert!(matches!(error, ModelError::File { .. } | ModelError::Io { .. }), "not a file error: {error:?}");
    let message = error.to_string();
    eprintln!("{message}");
    for part in expected {
        assert!(message.contains(part), "`{message}` does not mention `{part}`");
    }
}

#[test]
fn truncated_safetensors() {
    let dir = copy_of("llama");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() / 2, 20, 3] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        check(dir.path(), &["model.safetensors", "not a valid safetensors file"]);
    }
}

#[test]
fn wrong_tensor_shape() {
    let dir = copy_of("llama");
    let mut map = tensors(dir.path());
    map.insert(
        "model.layers.1.self_attn.k_proj.weight".to_string(),
        Tensor::zeros((16, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    save(dir.path(), &map);
    check(
        dir.path(),
        &["model.safetensors", "model.layers.1.self_attn.k_proj.weight", "[16, 64]", "[32, 64]"],
    );
}

#[test]
fn missing_tensor() {
    for (model, tensor) in [
        ("llama", "model.layers.0.mlp.up_proj.weight"),
        ("qwen2", "model.layers.1.self_attn.v_proj.bias"),
        ("gpt2", "transformer.h.1.ln_2.bias"),
    ] {
        let dir = copy_of(model);
        let mut map = tensors(dir.path());
        map.remove(tensor).unwrap();
        save(dir.path(), &map);
        check(dir.path(), &["model.safetensors", tensor, "missing"]);
    }
}

#[test]
fn missing_weights_file() {
    let dir = copy_of("llama");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    check(dir.path(), &["no model.safetensors"]);
}

#[test]
fn unknown_architecture() {
    let dir = copy_of("llama");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "bert", "architectures": ["BertForMaskedLM"]}"#,
    )
    .unwrap();
    check(dir.path(), &["config.json", "unsupported architecture", "bert"]);
}

#[test]
fn invalid_config() {
    let dir = copy_of("llama");
    let config_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, "{ not json").unwrap();
    check(dir.path(), &["config.json", "line 1"]);

    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&config_path, config.to_string()).unwrap();
    check(dir.path(), &["config.json", "missing field `hidden_size`"]);

    config["hidden_size"] = serde_json::json!("sixty-four");
    std::fs::write(&config_path, config.to_string()).unwrap();
    check(dir.path(), &["config.json", "invalid type"]);

    config["hidden_size"] = serde_json::json!(64);
    config["num_key_value_heads"] = serde_json::json!(3);
    std::fs::write(&config_path, config.to_string()).unwrap();
    check(dir.path(), &["config.json", "num_key_value_heads 3"]);

    config["num_key_value_heads"] = serde_json::json!(2);
    config["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&config_path, config.to_string()).unwrap();
    check(dir.path(), &["config.json", "rope scaling type `yarn`"]);
}

/// A minimal llama-architecture GGUF: metadata and one tensor of `dtype`.
fn small_gguf(path: &Path, tensor: &QTensor, architecture: &str) {
    let metadata = [
        ("general.architecture", Value::String(architecture.to_string())),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.feed_forward_length", Value::U32(96)),
        ("llama.context_length", Value::U32(128)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &[("token_embd.weight", tensor)]).unwrap();
}

fn embedding_table(dtype: GgmlDType) -> QTensor {
    let values = Tensor::randn(0f32, 1.0, (128, 64), &Device::Cpu).unwrap();
    QTensor::quantize(&values, dtype).unwrap()
}

#[test]
fn gguf_with_an_unsupported_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    small_gguf(&path, &embedding_table(GgmlDType::Q8_0), "llama");
    // Rewrite the tensor's type (the u32 after its dimensions) as 20, IQ4_NL.
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|window| window == name).unwrap();
    let type_at = at + name.len() + 4 + 2 * 8;
    assert_eq!(bytes[type_at..type_at + 4], 8u32.to_le_bytes());
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    check(&path, &["model.gguf", "not a valid GGUF file", "dtype"]);
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    small_gguf(&path, &embedding_table(GgmlDType::F32), "llama");
    let bytes = std::fs::read(&path).unwrap();
    // In the header, and in the tensor data (the header parses; the tensor is short).
    std::fs::write(&path, &bytes[..100]).unwrap();
    check(&path, &["model.gguf", "not a valid GGUF file"]);
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let error = Model::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("model.gguf") && error.contains("token_embd.weight"), "{error}");
}

#[test]
fn gguf_missing_a_tensor_or_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    small_gguf(&path, &embedding_table(GgmlDType::F32), "llama");
    check(&path, &["model.gguf", "blk.0.attn_norm.weight", "missing"]);

    small_gguf(&path, &embedding_table(GgmlDType::F32), "falcon");
    check(&path, &["model.gguf", "unsupported GGUF architecture `falcon`"]);

    // A header without the settings the architecture needs.
    let mut file = std::fs::File::create(&path).unwrap();
    let architecture = Value::String("llama".to_string());
    gguf_file::write(&mut file, &[("general.architecture", &architecture)], &[]).unwrap();
    check(&path, &["model.gguf", "llama.embedding_length"]);
}

#[test]
fn not_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello, this is not a model").unwrap();
    check(&path, &["notes.txt", "not a valid GGUF file"]);
    check(&dir.path().join("absent.gguf"), &["absent.gguf"]);
}

#[test]
fn out_of_range_token_ids_are_errors() {
    let model = Model::load(&model_dir("llama"), &Device::Cpu).unwrap();
    let tokens = Tensor::new(&[[1u32, 500]], &Device::Cpu).unwrap();
    let error = model.forward(&tokens, None, &mut model.new_cache()).unwrap_err();
    assert!(error.to_string().contains("token id 500"), "{error}");
    let _ = (Precision::F32, Trainable::No);
}
