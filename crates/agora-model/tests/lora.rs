//! LoRA against PEFT: adapters written by PEFT load and reproduce its logits (on, off,
//! merged), agora's adapter folders match PEFT's names and shapes, merged models save as
//! Hugging Face folders, gradients reach every adapter, and bad input is refused with a
//! clear error. Goldens: scripts/goldens/make_lora_goldens.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agora_model::lora::{LoraAdapters, LoraConfig};
use agora_model::weights::{Model, Precision, Trainable};
use agora_model::{DType, Device, LanguageModel, Tensor};
use candle_core::Var;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data")
}

fn base_model(name: &str) -> Model {
    Model::load(&test_data().join("models").join(name), &Device::Cpu).unwrap()
}

fn adapter_dir(name: &str) -> PathBuf {
    test_data().join("lora").join(name)
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(adapter_dir(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn logits(model: &Model, input_ids: &Tensor) -> Tensor {
    let tokens = input_ids.to_dtype(DType::U32).unwrap();
    model.forward(&tokens, None, &mut model.new_cache()).unwrap()
}

fn max_difference(left: &Tensor, right: &Tensor) -> f32 {
    assert_eq!(left.dims(), right.dims());
    (left - right).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|target| target.to_string()).collect(),
    }
}

fn error_of<T: std::fmt::Debug>(result: agora_model::Result<T>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn peft_adapters_reproduce_peft_logits_on_off_and_merged() {
    for name in ["gpt2", "llama"] {
        let golden = golden(name);
        let input_ids = &golden["input_ids"];
        let mut model = base_model(name);
        let adapters = LoraAdapters::load_peft(&mut model, &adapter_dir(name)).unwrap();
        assert_eq!(adapters.config().rank, 4);
        assert_eq!(adapters.config().alpha, 8.0);
        assert_eq!(adapters.modules().len(), if name == "gpt2" { 4 } else { 6 });

        let on = max_difference(&logits(&model, input_ids), &golden["peft_logits"]);
        assert!(on < 1e-4, "{name}: adapter on differs from PEFT by {on}");
        // The adapter matters: the base model's logits are far from PEFT's.
        assert!(max_difference(&golden["base_logits"], &golden["peft_logits"]) > 0.1);

        adapters.set_enabled(false);
        let off = max_difference(&logits(&model, input_ids), &golden["base_logits"]);
        assert!(off < 1e-4, "{name}: adapter off differs from the base model by {off}");
        adapters.set_enabled(true);

        adapters.merge(&mut model).unwrap();
        let merged = max_difference(&logits(&model, input_ids), &golden["merged_logits"]);
        assert!(merged < 1e-4, "{name}: merged model differs from PEFT's merge by {merged}");
        // Nothing left to merge; a second merge is refused rather than done twice.
        assert!(error_of(adapters.merge(&mut model)).contains("merged 0 of"));

        // The merged model saves as a Hugging Face folder that reloads unchanged.
        let saved = tempfile::tempdir().unwrap();
        model.save_hf(saved.path()).unwrap();
        let reloaded = Model::load(saved.path(), &Device::Cpu).unwrap();
        let difference = max_difference(&logits(&reloaded, input_ids), &golden["merged_logits"]);
        assert!(difference < 1e-4, "{name}: reloaded merged model differs by {difference}");
    }
}

#[test]
fn saved_adapters_have_peft_names_and_shapes_and_load_back() {
    for name in ["gpt2", "llama"] {
        let mut model = base_model(name);
        let adapters = LoraAdapters::load_peft(&mut model, &adapter_dir(name)).unwrap();
        let saved = tempfile::tempdir().unwrap();
        adapters.save_peft(saved.path(), "some/base-model").unwrap();

        let peft =
            candle_core::safetensors::load(adapter_dir(name).join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap();
        let ours =
            candle_core::safetensors::load(saved.path().join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut peft_names: Vec<&String> = peft.keys().collect();
        let mut our_names: Vec<&String> = ours.keys().collect();
        peft_names.sort();
        our_names.sort();
        assert_eq!(our_names, peft_names, "{name}");
        for (tensor_name, tensor) in &peft {
            assert_eq!(max_difference(&ours[tensor_name], tensor), 0.0, "{tensor_name}");
        }

        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(saved.path().join("adapter_config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter_dir(name).join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        for key in ["peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "fan_in_fan_out"] {
            assert_eq!(written[key], original[key], "{name}: {key}");
        }
        let sorted = |value: &serde_json::Value| {
            let mut names: Vec<String> =
                value.as_array().unwrap().iter().map(|item| item.as_str().unwrap().to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(sorted(&written["target_modules"]), sorted(&original["target_modules"]));
        assert_eq!(written["base_model_name_or_path"], "some/base-model");

        // Loaded into a fresh model, the saved folder gives PEFT's logits again.
        let mut fresh = base_model(name);
        let reloaded = LoraAdapters::load_peft(&mut fresh, saved.path()).unwrap();
        assert_eq!(reloaded.config(), adapters.config());
        let golden = golden(name);
        let difference = max_difference(&logits(&fresh, &golden["input_ids"]), &golden["peft_logits"]);
        assert!(difference < 1e-4, "{name}: {difference}");
    }
}

#[test]
fn fresh_adapters_start_as_the_base_model_with_peft_initialisation() {
    let golden = golden("llama");
    let mut model = base_model("llama");
    let adapters = LoraAdapters::attach(&mut model, &config(&["all-linear"]), 7).unwrap();
    // 7 projections in each of the 2 blocks, the output head excluded.
    assert_eq!(adapters.modules().len(), 14);
    let difference = max_difference(&logits(&model, &golden["input_ids"]), &golden["base_logits"]);
    assert!(difference < 1e-4, "{difference}");

    let vars = adapters.varmap().data().lock().unwrap();
    assert_eq!(vars.len(), 28);
    let a = vars["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].as_tensor();
    let b = vars["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].as_tensor();
    assert_eq!(a.dims(), [4, 96]);
    assert_eq!(b.dims(), [64, 4]);
    assert_eq!(b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // Kaiming-uniform with a = sqrt(5): uniform in ±1/sqrt(in), and not all near zero.
    let largest = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(largest <= 1.0 / 96f32.sqrt() && largest > 0.5 / 96f32.sqrt(), "{largest}");

    // The same seed draws the same values.
    let mut again = base_model("llama");
    let same = LoraAdapters::attach(&mut again, &config(&["all-linear"]), 7).unwrap();
    let same_a =
        same.varmap().data().lock().unwrap()["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
            .as_tensor()
            .clone();
    assert_eq!(max_difference(a, &same_a), 0.0);

    // GPT-2's Conv1D layers get PEFT's shapes too, with suffix matching as PEFT's:
    // `c_proj` adapts both the attention's and the MLP's.
    let mut gpt2 = base_model("gpt2");
    let adapters = LoraAdapters::attach(&mut gpt2, &config(&["c_proj"]), 1).unwrap();
    assert_eq!(
        adapters.modules(),
        [
            "transformer.h.0.attn.c_proj",
            "transformer.h.0.mlp.c_proj",
            "transformer.h.1.attn.c_proj",
            "transformer.h.1.mlp.c_proj"
        ]
    );
    let vars = adapters.varmap().data().lock().unwrap();
    assert_eq!(
        vars["base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"].as_tensor().dims(),
        [4, 256]
    );
    assert_eq!(vars["base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight"].as_tensor().dims(), [64, 4]);
}

/// Mean next-token cross-entropy over the golden ids.
fn loss(model: &Model, input_ids: &Tensor) -> Tensor {
    let logits = logits(model, input_ids);
    let (_, seq, vocab) = logits.dims3().unwrap();
    let predictions = logits.narrow(1, 0, seq - 1).unwrap().reshape((seq - 1, vocab)).unwrap();
    let targets =
        input_ids.to_dtype(DType::U32).unwrap().narrow(1, 1, seq - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&predictions, &targets).unwrap()
}

/// Every adapter variable's gradient magnitude (absent counts as zero).
fn gradient_magnitudes(adapters: &LoraAdapters, loss: &Tensor) -> Vec<(String, f32, Var)> {
    let gradients = loss.backward().unwrap();
    let vars = adapters.varmap().data().lock().unwrap();
    let mut magnitudes: Vec<(String, f32, Var)> = vars
        .iter()
        .map(|(name, var)| {
            let magnitude = gradients.get(var.as_tensor()).map_or(0.0, |gradient| {
                gradient.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            });
            (name.clone(), magnitude, var.clone())
        })
        .collect();
    magnitudes.sort_by(|left, right| left.0.cmp(&right.0));
    magnitudes
}

/// B starts at zero, so at initialisation only B gets a gradient (A's is `Bᵀ · ...` = 0).
/// One plain gradient step on every variable makes B non-zero; after it, the second
/// backward pass reaches every A and every B, in the first block as in the last.
#[test]
fn gradients_reach_every_adapter_and_the_base_stays_frozen() {
    for (name, targets) in [("llama", vec!["all-linear"]), ("gpt2", vec!["c_attn", "c_proj", "c_fc"])] {
        let golden = golden(name);
        let input_ids = &golden["input_ids"];
        let mut model = base_model(name);
        let adapters = LoraAdapters::attach(&mut model, &config(&targets), 3).unwrap();
        adapters.set_training(true, 0);

        let first = gradient_magnitudes(&adapters, &loss(&model, input_ids));
        for (var_name, magnitude, _) in &first {
            if var_name.contains("lora_B") {
                assert!(*magnitude > 0.0 && magnitude.is_finite(), "{name}: {var_name} got no gradient");
            } else {
                assert_eq!(*magnitude, 0.0, "{name}: {var_name} (B is zero at initialisation)");
            }
        }
        // One SGD step with the gradients of a fresh backward pass.
        let gradients = loss(&model, input_ids).backward().unwrap();
        for (_, _, var) in &first {
            if let Some(gradient) = gradients.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (gradient * 0.1).unwrap()).unwrap()).unwrap();
            }
        }
        let second = gradient_magnitudes(&adapters, &loss(&model, input_ids));
        assert_eq!(second.len(), first.len());
        for (var_name, magnitude, _) in &second {
            assert!(
                *magnitude > 0.0 && magnitude.is_finite(),
                "{name}: {var_name} got no gradient after a step"
            );
        }

        // The base weights are plain tensors, not variables.
        for (module, linear) in model.linear_layers_mut().unwrap() {
            assert!(!linear.dense_weight().unwrap().is_variable(), "{name}: {module}");
            assert!(linear.bias.as_ref().is_none_or(|bias| !bias.is_variable()), "{name}: {module}");
        }
    }
}

#[test]
fn dropout_runs_only_in_training_and_is_reproducible_from_the_step_seed() {
    let golden = golden("llama");
    let input_ids = &golden["input_ids"];
    let mut model = base_model("llama");
    // PEFT's file says lora_dropout 0.05: enough to move the logits visibly.
    let adapters = LoraAdapters::load_peft(&mut model, &adapter_dir("llama")).unwrap();
    assert_eq!(adapters.config().dropout, 0.05);
    let evaluation = logits(&model, input_ids);
    assert!(max_difference(&evaluation, &golden["peft_logits"]) < 1e-4);

    adapters.set_training(true, 11);
    let first = logits(&model, input_ids);
    let second_call = logits(&model, input_ids);
    adapters.set_training(true, 11);
    let replay = logits(&model, input_ids);
    adapters.set_training(true, 12);
    let other_step = logits(&model, input_ids);
    adapters.set_training(false, 0);
    let back = logits(&model, input_ids);

    assert!(max_difference(&first, &evaluation) > 1e-3, "dropout changed nothing");
    assert_eq!(max_difference(&first, &replay), 0.0, "the same step seed must give the same masks");
    assert!(max_difference(&first, &second_call) > 1e-3, "a second pass of a step must draw new masks");
    assert!(max_difference(&first, &other_step) > 1e-3);
    assert_eq!(max_difference(&back, &evaluation), 0.0);
}

#[test]
fn config_validation_and_unknown_targets() {
    let mut model = base_model("gpt2");
    let zero_rank = LoraConfig { rank: 0, ..config(&["c_attn"]) };
    assert!(error_of(LoraAdapters::attach(&mut model, &zero_rank, 0)).contains("rank"));
    let full_dropout = LoraConfig { dropout: 1.0, ..config(&["c_attn"]) };
    assert!(error_of(LoraAdapters::attach(&mut model, &full_dropout, 0)).contains("dropout"));

    let message = error_of(LoraAdapters::attach(&mut model, &config(&["c_attn", "q_proj"]), 0));
    assert!(message.contains("`q_proj`"), "{message}");
    assert!(
        message.contains("`c_attn`") && message.contains("`c_fc`") && message.contains("`c_proj`"),
        "{message}"
    );
    // The failed attach left no adapter behind.
    assert!(model.linear_layers_mut().unwrap().iter().all(|(_, linear)| linear.lora.is_none()));

    // An experiment file's LoRA section: unknown keys are refused.
    let parsed: LoraConfig = serde_json::from_str(
        r#"{"rank": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}"#,
    )
    .unwrap();
    assert_eq!(parsed.scale(), 2.0);
    let typo = serde_json::from_str::<LoraConfig>(
        r#"{"rank": 8, "alpha": 16, "dropout": 0.1, "target_module": ["q_proj"]}"#,
    );
    assert!(typo.unwrap_err().to_string().contains("target_module"));

    // Attaching twice to one layer is refused.
    LoraAdapters::attach(&mut model, &config(&["c_attn"]), 0).unwrap();
    assert!(error_of(LoraAdapters::attach(&mut model, &config(&["c_attn"]), 0)).contains("already"));
    // A model still carrying adapters does not save as a plain checkpoint.
    let saved = tempfile::tempdir().unwrap();
    assert!(error_of(model.save_hf(saved.path())).contains("merge"));
}

/// Copies the PEFT llama adapter folder into a temporary one with its weights replaced.
fn broken_adapter(tensors: &HashMap<String, Tensor>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(adapter_dir("llama").join("adapter_config.json"), dir.path().join("adapter_config.json"))
        .unwrap();
    candle_core::safetensors::save(tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    dir
}

#[test]
fn bad_adapter_folders_are_refused_with_the_file_and_tensor_named() {
    let original =
        candle_core::safetensors::load(adapter_dir("llama").join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let a_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";

    let mut wrong_shape = original.clone();
    wrong_shape.insert(a_name.to_string(), Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap());
    let dir = broken_adapter(&wrong_shape);
    let message = error_of(LoraAdapters::load_peft(&mut base_model("llama"), dir.path()));
    assert!(
        message.contains(a_name) && message.contains("[4, 32]") && message.contains("[4, 64]"),
        "{message}"
    );

    let mut unknown = original.clone();
    let tensor = unknown.remove(a_name).unwrap();
    unknown.insert("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".to_string(), tensor);
    let dir = broken_adapter(&unknown);
    let message = error_of(LoraAdapters::load_peft(&mut base_model("llama"), dir.path()));
    assert!(
        message.contains("model.layers.7.self_attn.q_proj")
            && message.contains("model.layers.0.mlp.down_proj"),
        "{message}"
    );

    let mut half = original.clone();
    half.remove(a_name);
    let dir = broken_adapter(&half);
    let message = error_of(LoraAdapters::load_peft(&mut base_model("llama"), dir.path()));
    assert!(message.contains("needs both"), "{message}");

    let empty = tempfile::tempdir().unwrap();
    let message = error_of(LoraAdapters::load_peft(&mut base_model("llama"), empty.path()));
    assert!(message.contains("adapter_config.json"), "{message}");
    std::fs::copy(adapter_dir("llama").join("adapter_config.json"), empty.path().join("adapter_config.json"))
        .unwrap();
    let message = error_of(LoraAdapters::load_peft(&mut base_model("llama"), empty.path()));
    assert!(message.contains("adapter_model.safetensors") && message.contains("missing"), "{message}");
}

/// Writes the tiny Llama test model as a GGUF file the way llama.cpp's converter does
/// (its names, q/k rows permuted for the interleaved rope), matrices as `matrix_type`.
fn write_llama_gguf(path: &Path, matrix_type: GgmlDType) {
    use gguf_file::Value;
    let dir = test_data().join("models/llama");
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    // Hugging Face rows (head, half, pair) -> llama.cpp rows (head, pair, half).
    let permute = |tensor: &Tensor, heads: usize| {
        let (rows, columns) = tensor.dims2().unwrap();
        tensor
            .reshape((heads, 2, rows / heads / 2, columns))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, columns))
            .unwrap()
    };
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    for (name, tensor) in &tensors {
        let gguf_name = agora_model::llama::gguf_name(name);
        let tensor = if name.ends_with("q_proj.weight") {
            permute(tensor, 4)
        } else if name.ends_with("k_proj.weight") {
            permute(tensor, 2)
        } else {
            tensor.clone()
        };
        let dtype = if tensor.rank() == 2 { matrix_type } else { GgmlDType::F32 };
        quantized.push((gguf_name, QTensor::quantize(&tensor, dtype).unwrap()));
    }
    let metadata = [
        ("general.architecture", Value::String("llama".to_string())),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.feed_forward_length", Value::U32(96)),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(128)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(key, value)| (*key, value)).collect();
    let quantized: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &quantized).unwrap();
}

#[test]
fn a_quantized_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.Q8_0.gguf");
    write_llama_gguf(&path, GgmlDType::Q8_0);
    let mut model = Model::from_gguf(&path, &Device::Cpu, Precision::Quantized, Trainable::No).unwrap();
    let message = error_of(LoraAdapters::attach(&mut model, &config(&["q_proj"]), 0));
    assert!(message.contains("precision f32"), "{message}");
    let message = error_of(LoraAdapters::load_peft(&mut model, &adapter_dir("llama")));
    assert!(message.contains("precision f32"), "{message}");
}

/// A Llama read from GGUF at f32 takes PEFT's adapter (its q/k rows are back in Hugging
/// Face order), merges, and saves as a Hugging Face folder with a config.json rebuilt
/// from the GGUF metadata.
#[test]
fn a_gguf_llama_at_f32_takes_adapters_merges_and_saves_as_hugging_face() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.f32.gguf");
    write_llama_gguf(&path, GgmlDType::F32);
    let golden = golden("llama");
    let input_ids = &golden["input_ids"];
    let mut model = Model::from_gguf(&path, &Device::Cpu, Precision::F32, Trainable::No).unwrap();
    assert!(max_difference(&logits(&model, input_ids), &golden["base_logits"]) < 1e-4);
    let adapters = LoraAdapters::load_peft(&mut model, &adapter_dir("llama")).unwrap();
    assert!(max_difference(&logits(&model, input_ids), &golden["peft_logits"]) < 1e-4);
    adapters.merge(&mut model).unwrap();
    let saved = dir.path().join("merged");
    model.save_hf(&saved).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["num_key_value_heads"], 2);
    let reloaded = Model::load(&saved, &Device::Cpu).unwrap();
    let difference = max_difference(&logits(&reloaded, input_ids), &golden["merged_logits"]);
    assert!(difference < 1e-4, "{difference}");
}

/// The default model (SmolLM2-135M, GGUF) at f32 takes adapters under PEFT's names for
/// it; fresh adapters leave its logits unchanged and the adapted layers are trainable.
#[test]
fn the_default_model_at_f32_takes_adapters_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q8_0.gguf");
    if !path.is_file() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let mut model = Model::from_gguf(&path, &Device::Cpu, Precision::F32, Trainable::No).unwrap();
    let tokens = Tensor::new(&[[1u32, 504, 3458, 314, 253, 2891]], &Device::Cpu).unwrap();
    let before = model.forward(&tokens, None, &mut model.new_cache()).unwrap();
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    let adapters = LoraAdapters::attach(&mut model, &lora, 0).unwrap();
    assert_eq!(adapters.modules().len(), 60);
    assert_eq!(adapters.modules()[1], "model.layers.0.self_attn.v_proj");
    let parameters: usize = adapters.varmap().all_vars().iter().map(|var| var.elem_count()).sum();
    // q: 8 x 576 + 576 x 8, v: 8 x 576 + 192 x 8, in each of 30 layers.
    assert_eq!(parameters, 30 * (2 * 8 * 576 + 8 * 576 + 192 * 8));
    let after = model.forward(&tokens, None, &mut model.new_cache()).unwrap();
    assert!(max_difference(&before, &after) < 1e-4);
}
