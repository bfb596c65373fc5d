//! The training loop end to end on the tiny random GPT-2 and Llama of agora-model's test
//! data (with a character-level tokenizer written here): SFT learns a small corpus, DPO
//! learns a toy preference set (LoRA), a run halted between checkpoints resumes to the
//! same weights and logs as an uninterrupted run, and data that leaves nothing to train
//! on is an error.

use std::path::{Path, PathBuf};

use agora_train::config::{
    DataConfig, Layout, LoopConfig, Method, OptimizerConfig, ScheduleConfig, ScheduleKind,
};
use agora_train::data::{DataOptions, load_preferences, load_sft};
use agora_train::model::load_model;
use agora_train::trainer::{self, Dataset, Quiet, TrainData, TrainOptions};
use agora_train::{RunDir, TrainConfig};
use serde_json::Value;

/// A copy of a tiny test model with the character-level tokenizer of test_data.
fn tiny_model(name: &str, dir: &Path) -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = crate_dir.join("../agora-model/test_data/models").join(name);
    let tokenizer = crate_dir.join("test_data/char_tokenizer");
    let target = dir.join(name);
    std::fs::create_dir_all(&target).unwrap();
    for (from, file) in [
        (&source, "config.json"),
        (&source, "model.safetensors"),
        (&tokenizer, "tokenizer.json"),
        (&tokenizer, "tokenizer_config.json"),
    ] {
        std::fs::copy(from.join(file), target.join(file)).unwrap();
    }
    target
}

fn write_jsonl(path: &Path, records: &[Value]) {
    let text: String = records.iter().map(|record| format!("{record}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn config(method: Method, model: &Path, train: &Path) -> TrainConfig {
    TrainConfig {
        method,
        model: model.display().to_string(),
        seed: 11,
        data: DataConfig {
            train: train.to_path_buf(),
            eval: None,
            layout: Layout::Trl,
            max_length: 60,
            max_prompt_length: None,
        },
        lora: None,
        optimizer: OptimizerConfig { learning_rate: 3e-3, ..OptimizerConfig::default() },
        schedule: ScheduleConfig { kind: ScheduleKind::Constant, warmup_steps: 0, warmup_ratio: 0.0 },
        training: LoopConfig { batch_size: 4, epochs: 1000, ..LoopConfig::default() },
        dpo: Default::default(),
        samples: Default::default(),
    }
}

fn sft_corpus(dir: &Path) -> PathBuf {
    let pairs = [
        ("colour of grass:", " green"),
        ("colour of sky:", " blue"),
        ("colour of snow:", " white"),
        ("colour of coal:", " black"),
        ("opposite of up:", " down"),
        ("opposite of hot:", " cold"),
        ("opposite of wet:", " dry"),
        ("opposite of old:", " new"),
    ];
    let records: Vec<Value> = pairs
        .iter()
        .map(|(prompt, completion)| serde_json::json!({"prompt": prompt, "completion": completion}))
        .collect();
    let path = dir.join("sft.jsonl");
    write_jsonl(&path, &records);
    path
}

fn load(config: &TrainConfig) -> (agora_train::model::TrainModel, TrainData) {
    let model =
        load_model(Path::new(&config.model), &trainer::device(), config.lora.as_ref(), config.seed).unwrap();
    let options = DataOptions { max_length: config.data.max_length, max_prompt_length: None };
    let train = match config.method {
        Method::Sft => {
            Dataset::Sft(load_sft(&config.data.train, &model.tokenizer, None, &options).unwrap().0)
        }
        Method::Dpo => Dataset::Preferences(
            load_preferences(&config.data.train, &model.tokenizer, None, &options).unwrap().0,
        ),
    };
    (model, TrainData { train, eval: None, reports: Vec::new() })
}

fn losses(run: &RunDir) -> Vec<(u64, f64)> {
    run.read_metrics()
        .unwrap()
        .iter()
        .filter_map(|record| Some((record.get("step")?.as_u64()?, record.get("loss")?.as_f64()?)))
        .collect()
}

#[test]
fn sft_drives_the_loss_of_a_small_corpus_down() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("gpt2", dir.path());
    let mut config = config(Method::Sft, &model, &sft_corpus(dir.path()));
    config.training.max_steps = Some(200);
    let (mut train_model, data) = load(&config);
    let run = RunDir::create(&dir.path().join("runs"), "sft").unwrap();
    run.write_config(&config).unwrap();
    let options = TrainOptions::new(dir.path().join("cache"));
    let summary = trainer::train(&config, &mut train_model, &data, &run, &options, &mut Quiet).unwrap();
    assert_eq!(summary.steps, 200);
    assert_eq!(summary.status, "finished");
    let losses = losses(&run);
    let first = losses[0].1;
    let last = losses.last().unwrap().1;
    eprintln!("SFT loss: step 1 {first:.4}, step 200 {last:.4}");
    // From about 6 (random weights; ln 128 = 4.85 would be uniform) to a corpus learnt by heart.
    assert!(first > 3.5, "first loss {first}");
    assert!(last < 0.5, "loss went from {first} to {last}");
    assert!(run.path.join("final/model.safetensors").is_file());
    assert!(run.path.join("metrics.csv").is_file());
    assert!(run.last_checkpoint().unwrap().is_some());
}

fn preference_corpus(dir: &Path) -> PathBuf {
    let mut records = Vec::new();
    for (index, subject) in
        ["cats", "dogs", "rain", "tea", "maps", "jazz", "snow", "bread"].iter().enumerate()
    {
        records.push(serde_json::json!({
            "prompt": format!("Is {subject} good?"),
            "chosen": if index % 2 == 0 { " yes, it is" } else { " yes, quite" },
            "rejected": if index % 2 == 0 { " no way" } else { " never" },
        }));
    }
    let path = dir.join("dpo.jsonl");
    write_jsonl(&path, &records);
    path
}

#[test]
fn dpo_with_lora_learns_a_toy_preference_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("llama", dir.path());
    let mut config = config(Method::Dpo, &model, &preference_corpus(dir.path()));
    config.lora = Some(agora_model::lora::LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".to_string(), "v_proj".to_string(), "down_proj".to_string()],
    });
    config.optimizer.learning_rate = 1e-2;
    config.training.max_steps = Some(60);
    let (mut train_model, data) = load(&config);
    let run = RunDir::create(&dir.path().join("runs"), "dpo").unwrap();
    run.write_config(&config).unwrap();
    let options = TrainOptions::new(dir.path().join("cache"));
    let summary = trainer::train(&config, &mut train_model, &data, &run, &options, &mut Quiet).unwrap();
    let accuracy = summary.last_metrics["rewards/accuracies"].as_f64().unwrap();
    let margin = summary.last_metrics["rewards/margins"].as_f64().unwrap();
    eprintln!("DPO after 60 steps: rewards/accuracies {accuracy}, rewards/margins {margin:.4}");
    assert!(accuracy > 0.9, "rewards/accuracies {accuracy}");
    assert!(margin > 0.0, "rewards/margins {margin}");
    let first_loss = losses(&run)[0].1;
    // The sigmoid loss starts at ln 2 (policy = reference) and falls.
    assert!((first_loss - std::f64::consts::LN_2).abs() < 1e-3, "{first_loss}");
    assert!(summary.final_train_loss.unwrap() < 0.5 * first_loss);
    assert!(run.path.join("final/adapter_config.json").is_file());
    assert!(run.path.join("final/adapter_model.safetensors").is_file());
    // The reference log-probs were cached and are read back by a second run.
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().collect();
    assert_eq!(cached.len(), 1);
}

fn read_weights(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_run_halted_between_checkpoints_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("gpt2", dir.path());
    let mut config = config(Method::Sft, &model, &sft_corpus(dir.path()));
    config.training.batch_size = 3;
    config.training.gradient_accumulation_steps = 2;
    config.training.epochs = 3;
    config.training.save_every = Some(2);
    config.schedule.kind = ScheduleKind::Cosine;
    config.schedule.warmup_steps = 1;
    config.optimizer.weight_decay = 0.01;
    let options = TrainOptions::new(dir.path().join("cache"));

    let straight = RunDir::create(&dir.path().join("runs"), "sft").unwrap();
    let (mut model_a, data) = load(&config);
    let summary = trainer::train(&config, &mut model_a, &data, &straight, &options, &mut Quiet).unwrap();
    // 8 examples, batches of 3 -> 3 batches, 2 per step -> 2 steps per epoch, 3 epochs.
    assert_eq!(summary.steps, 6);

    let halted = RunDir::create(&dir.path().join("runs"), "sft").unwrap();
    let (mut model_b, data) = load(&config);
    let mut halting = options.clone();
    halting.halt_after_step = Some(3);
    let summary = trainer::train(&config, &mut model_b, &data, &halted, &halting, &mut Quiet).unwrap();
    assert_eq!(summary.status, "halted");
    assert_eq!(halted.last_checkpoint().unwrap().unwrap().0, 2);
    assert_eq!(losses(&halted).len(), 3, "step 3 was logged before the halt");

    // A fresh process: the model loaded anew, the run resumed from step 2.
    let (mut model_c, data) = load(&config);
    let summary = trainer::train(&config, &mut model_c, &data, &halted, &options, &mut Quiet).unwrap();
    assert_eq!(summary.steps, 6);
    assert_eq!(losses(&halted), losses(&straight), "same losses, step 3 not logged twice");
    assert_eq!(
        read_weights(&halted.path.join("final/model.safetensors")),
        read_weights(&straight.path.join("final/model.safetensors")),
        "bit-identical weights"
    );

    // A run refuses to resume on other data.
    let changed = RunDir::create(&dir.path().join("runs"), "sft").unwrap();
    let (mut model_d, data) = load(&config);
    trainer::train(&config, &mut model_d, &data, &changed, &halting, &mut Quiet).unwrap();
    let (mut model_e, mut data) = load(&config);
    if let Dataset::Sft(examples) = &mut data.train {
        examples.pop();
    }
    let error = trainer::train(&config, &mut model_e, &data, &changed, &options, &mut Quiet).unwrap_err();
    assert!(error.to_string().contains("training data changed"), "{error}");
}

#[test]
fn data_that_leaves_nothing_to_train_on_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model("gpt2", dir.path());
    let path = dir.path().join("same.jsonl");
    write_jsonl(&path, &[serde_json::json!({"prompt": "Q:", "chosen": " a", "rejected": " a"})]);
    let config = config(Method::Dpo, &model, &path);
    let (mut train_model, data) = load(&config);
    let run = RunDir::create(&dir.path().join("runs"), "dpo").unwrap();
    let options = TrainOptions::new(dir.path().join("cache"));
    let error = trainer::train(&config, &mut train_model, &data, &run, &options, &mut Quiet).unwrap_err();
    assert!(error.to_string().contains("no training examples"), "{error}");
}
