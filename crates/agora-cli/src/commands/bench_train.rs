//! `agora bench train`: trained tokens per second of one optimizer step (forward, loss,
//! backward, clipping, AdamW), through the training loop's own step code.
//!
//! Without `--model`: full fine-tuning of the random-initialised GPT-2 6 x 384 of
//! `forward-gpt2` on `--batch` rows of `--sequence` random tokens (SFT: loss on every
//! position but the first; DPO: `--batch` pairs, each row half prompt, half completion,
//! chosen and rejected in one forward pass) — the workload scripts/bench/torch_train.py
//! runs with PyTorch. With `--model` (e.g. `default`) and `--lora-rank`: LoRA on that
//! model, reporting peak memory too.

use std::time::Instant;

use agora_core::SplitMix64;
use agora_train::config::{DataConfig, Layout, LoopConfig, Method, OptimizerConfig, TrainConfig};
use agora_train::data::{PreferencePair, TokenizedExample};
use agora_train::model::load_model;
use agora_train::trainer::{self, Dataset};
use anyhow::Context;
use serde::Serialize;

use super::bench::{median, peak_rss, reset_peak_rss, threads_or_all, write_random_gpt2};
use super::train::training_model_path;
use crate::args::BenchArgs;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
struct TrainReport {
    method: String,
    model: String,
    lora_rank: Option<usize>,
    threads: usize,
    batch: usize,
    sequence: usize,
    trainable_parameters: usize,
    repeats: usize,
    /// Tokens per step: SFT `batch x sequence`; DPO `2 x batch x sequence` (chosen and
    /// rejected rows, prompts included).
    tokens_per_step: usize,
    seconds: Vec<f64>,
    tokens_per_second: f64,
    /// CPU seconds of the process during each step (all threads; Linux): unlike `seconds`
    /// they leave out what a shared host's hypervisor took.
    cpu_seconds: Option<Vec<f64>>,
    /// `tokens_per_step / median(cpu_seconds)`: tokens per CPU-second, summed over threads.
    tokens_per_cpu_second: Option<f64>,
    /// Peak resident set size from before loading the model to the end, in MB.
    peak_rss_megabytes: Option<f64>,
}

/// The smallest tokenizer.json the loader accepts: the benchmark feeds token ids.
const PLACEHOLDER_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;

pub fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.repeats > 0 && args.batch > 0 && args.sequence > 1,
        "--repeats, --batch > 0, --sequence > 1"
    );
    let method = match args.method.as_str() {
        "sft" => Method::Sft,
        "dpo" => Method::Dpo,
        other => anyhow::bail!("--method {other}: expected sft or dpo"),
    };
    let threads = threads_or_all(args.threads);
    agora_model::engine::set_threads(threads);
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let (model_path, model_name) = match &args.model {
        Some(reference) => (training_model_path(reference, None)?, reference.clone()),
        None => {
            write_random_gpt2(scratch.path(), args.seed)?;
            std::fs::write(scratch.path().join("tokenizer.json"), PLACEHOLDER_TOKENIZER)
                .context("cannot write the placeholder tokenizer")?;
            (scratch.path().to_path_buf(), "random GPT-2 6x384, vocabulary 50257".to_string())
        }
    };
    let lora = args.lora_rank.map(|rank| agora_model::lora::LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        target_modules: if args.model.is_some() {
            vec!["q_proj".to_string(), "v_proj".to_string()]
        } else {
            vec!["c_attn".to_string()]
        },
    });
    let config = TrainConfig {
        method,
        model: model_path.display().to_string(),
        seed: args.seed,
        data: DataConfig {
            train: "(random tokens)".into(),
            eval: None,
            layout: Layout::Trl,
            max_length: args.sequence,
            max_prompt_length: None,
        },
        lora,
        optimizer: OptimizerConfig { learning_rate: 1e-4, ..OptimizerConfig::default() },
        schedule: Default::default(),
        training: LoopConfig { batch_size: args.batch, ..LoopConfig::default() },
        dpo: Default::default(),
        samples: Default::default(),
    };
    reset_peak_rss();
    let model = load_model(&model_path, &trainer::device(), config.lora.as_ref(), config.seed)
        .with_context(|| format!("load {}", model_path.display()))?;
    let vocab = model.vocab_size() as u64;
    let mut random = SplitMix64::new(args.seed);
    let mut tokens =
        |count: usize| -> Vec<u32> { (0..count).map(|_| (random.next_u64() % vocab) as u32).collect() };
    let data = match method {
        Method::Sft => Dataset::Sft(
            (0..args.batch)
                .map(|line| {
                    let mut targets = vec![true; args.sequence];
                    targets[0] = false;
                    TokenizedExample { tokens: tokens(args.sequence), targets, line }
                })
                .collect(),
        ),
        Method::Dpo => {
            let half = args.sequence / 2;
            Dataset::Preferences(
                (0..args.batch)
                    .map(|line| PreferencePair {
                        prompt: tokens(half),
                        chosen: tokens(args.sequence - half),
                        rejected: tokens(args.sequence - half),
                        line,
                    })
                    .collect(),
            )
        }
    };
    let trainable_parameters = model.parameters()?.count();
    let started = Instant::now();
    let timings = trainer::time_steps(&config, &model, &data, args.repeats)?;
    let seconds: Vec<f64> = timings.iter().map(|timing| timing.seconds).collect();
    let cpu_seconds: Option<Vec<f64>> = timings.iter().map(|timing| timing.cpu_seconds).collect();
    let tokens_per_step = timings.first().map_or(0, |timing| timing.tokens);
    for (run, seconds) in seconds.iter().enumerate() {
        eprintln!("step {}: {:.1} tok/s", run + 1, tokens_per_step as f64 / seconds);
    }
    let report = TrainReport {
        method: args.method.clone(),
        model: model_name,
        lora_rank: args.lora_rank,
        threads,
        batch: args.batch,
        sequence: args.sequence,
        trainable_parameters,
        repeats: args.repeats,
        tokens_per_step,
        tokens_per_second: tokens_per_step as f64 / median(&seconds),
        seconds,
        tokens_per_cpu_second: cpu_seconds.as_ref().map(|cpu| tokens_per_step as f64 / median(cpu)),
        cpu_seconds,
        peak_rss_megabytes: peak_rss(),
    };
    if settings.json {
        return crate::output::print_json(&report);
    }
    println!(
        "{} on {}{}: threads {}, batch {} x {} tokens, {:.2}M trainable parameters",
        report.method,
        report.model,
        report.lora_rank.map_or(String::new(), |rank| format!(" (LoRA rank {rank})")),
        report.threads,
        report.batch,
        report.sequence,
        report.trainable_parameters as f64 / 1e6
    );
    println!(
        "one training step: {:.1} tok/s (median of {}), peak RSS {} MB, {:.1} s in all",
        report.tokens_per_second,
        report.repeats,
        report.peak_rss_megabytes.map_or("?".to_string(), |mb| format!("{mb:.0}")),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
