//! `agora model info|fetch|convert`, and loading the model a command asks for (the
//! embedded default is fetched on first use and converted once to q8_0, for which
//! candle has fast CPU kernels).

use std::path::PathBuf;

use agora_model::convert::{ConvertTarget, convert_gguf, converted_file_name};
use agora_model::engine::{Engine, set_threads};
use agora_model::fetch::{fetch_default, models_dir, resolve_model};
use agora_model::{Device, FALLBACK_NOTICE, SamplingConfig};
use anyhow::Context;

use crate::args::{ConvertTo, ModelArgs, ModelCommand, SamplingArgs};
use crate::settings::Settings;

pub fn run(settings: &Settings, command: &ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Info { model } => {
            let args = ModelArgs { model: model.clone(), models_dir: None, threads: None, api_key_env: None };
            let engine = load_engine(&args)?;
            let summary = engine.summary();
            if settings.json {
                return crate::output::print_json(&summary);
            }
            println!("model: {}", summary.path.display());
            println!("architecture: {}", summary.architecture);
            println!(
                "layers: {}, hidden: {}, heads: {} ({} key/value), vocabulary: {}, context: {}",
                summary.layers,
                summary.hidden_size,
                summary.heads,
                summary.kv_heads,
                summary.vocab_size,
                summary.context
            );
            println!("tied embeddings: {}", summary.tied_embeddings);
            println!(
                "tokenizer: {} tokens, end-of-sequence ids {:?}",
                summary.tokenizer_vocab, summary.eos_token_ids
            );
            println!("chat template: {}", summary.chat_template);
            Ok(())
        }
        ModelCommand::Fetch => {
            let path = fetch_default(&models_dir(None))?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::Convert { input, to, out } => {
            let input = match input {
                Some(path) => path.clone(),
                None => fetch_default(&models_dir(None))?,
            };
            let target = convert_target(*to);
            let output = out.clone().unwrap_or_else(|| converted_file_name(&input, target));
            let report = convert_gguf(&input, &output, target)?;
            if settings.json {
                return crate::output::print_json(&serde_json::json!({
                    "input": input,
                    "output": output,
                    "target": target.name(),
                    "report": format!("{report:?}"),
                }));
            }
            println!("{} -> {} ({})", input.display(), output.display(), target.name());
            Ok(())
        }
    }
}

fn convert_target(to: ConvertTo) -> ConvertTarget {
    match to {
        ConvertTo::Q8_0 => ConvertTarget::Q8_0,
        ConvertTo::Q4_0 => ConvertTarget::Q4_0,
        ConvertTo::F16 => ConvertTarget::F16,
        ConvertTo::F32 => ConvertTarget::F32,
    }
}

/// The file a model reference names; without one, the default model as q8_0 (fetched
/// and converted on first use).
pub fn model_path(args: &ModelArgs) -> anyhow::Result<PathBuf> {
    if let Some(reference) = &args.model {
        return Ok(resolve_model(reference)?);
    }
    let dir = models_dir(args.models_dir.as_deref());
    let original = fetch_default(&dir)?;
    let converted = converted_file_name(&original, ConvertTarget::Q8_0);
    if !converted.is_file() {
        eprintln!("converting {} to q8_0 once (candle has no fast Q4_1 kernel)", original.display());
        convert_gguf(&original, &converted, ConvertTarget::Q8_0)
            .with_context(|| format!("convert {}", original.display()))?;
    }
    Ok(converted)
}

/// Loads the model a command asks for, on the CPU.
pub fn load_engine(args: &ModelArgs) -> anyhow::Result<Engine> {
    if let Some(threads) = args.threads {
        set_threads(threads);
    }
    let path = model_path(args)?;
    let engine = Engine::load(&path, &Device::Cpu).with_context(|| format!("load {}", path.display()))?;
    if engine.template.is_fallback() {
        eprintln!("{FALLBACK_NOTICE}");
    }
    Ok(engine)
}

pub fn sampling_config(args: &SamplingArgs) -> SamplingConfig {
    SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        no_repeat_ngram_size: args.no_repeat_ngram,
        max_new_tokens: args.max_new_tokens,
        stop_strings: args.stop.clone(),
        stop_token_ids: Vec::new(),
        seed: args.seed,
    }
}
