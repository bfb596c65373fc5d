//! `agora quickstart`: the main job on the bundled examples — import every example
//! corpus and collection, build SFT/DPO/KTO training data with seeded splits, export
//! ConvoKit and Parquet, and say where everything went.

use std::path::{Path, PathBuf};

use agora_corpus::{Format, ImportOptions, sdf};
use agora_model::generate::Control;
use agora_model::{Message, SamplingConfig};
use agora_store::NamedText;
use anyhow::{Context, bail};

use crate::args::{BuildArgs, BuildKind, ExportArgs, ExportFormat, ModelArgs, SftLayout};
use crate::settings::Settings;

/// The example corpora: (format, file under the examples folder, corpus name).
const CORPORA: [(Format, &str, &str); 3] = [
    (Format::Cmv, "cmv_sample.jsonlist", "cmv"),
    (Format::Esconv, "esconv_sample.json", "esconv"),
    (Format::PersonaChat, "personachat_sample.txt", "personachat"),
];

/// Training data to build: (kind, corpus, output folder under `exports/`).
const BUILDS: [(BuildKind, &str, &str); 5] = [
    (BuildKind::Sft, "cmv", "cmv-sft"),
    (BuildKind::Dpo, "cmv", "cmv-dpo"),
    (BuildKind::Kto, "cmv", "cmv-kto"),
    (BuildKind::Sft, "esconv", "esconv-sft"),
    (BuildKind::Sft, "personachat", "personachat-sft"),
];

pub fn run(settings: &Settings, args: &crate::args::QuickstartArgs) -> anyhow::Result<()> {
    let examples = match &args.examples {
        Some(path) => path.clone(),
        None => default_examples()?,
    };
    let mut store = settings.open_or_create_store()?;
    eprintln!("workspace: {}", settings.workspace.display());

    for (format, file, name) in CORPORA {
        let path = examples.join(file);
        let (report, counts) =
            super::import::import_corpus(&store, format, &path, name, &ImportOptions::default())
                .with_context(|| format!("import {} {}", format.name(), path.display()))?;
        println!(
            "imported {name}: {} conversations, {} turns ({} new, {} unchanged)",
            report.conversations, report.turns, counts.added, counts.unchanged
        );
    }
    let personas = sdf::read_personas(&examples.join("sdf/personas")).context("import sdf-personas")?;
    store.put_personas("sdf-personas", &personas)?;
    let topics: Vec<NamedText> = sdf::read_texts(&examples.join("sdf/topics"))
        .context("import sdf-texts")?
        .into_iter()
        .map(|text| NamedText { name: text.name, text: text.text })
        .collect();
    store.put_texts("sdf-topics", &topics)?;
    println!("imported sdf-personas: {} personas; sdf-topics: {} topics", personas.len(), topics.len());
    drop(store);

    let exports = settings.workspace.join("exports");
    for (kind, corpus, folder) in BUILDS {
        let build = BuildArgs {
            kind,
            corpus: corpus.to_string(),
            out: exports.join(folder),
            split: "0.8,0.1,0.1".to_string(),
            seed: 42,
            layout: SftLayout::Messages,
            standard: false,
            negatives: 1,
            system: None,
            any_giver: false,
        };
        super::build::run(settings, &build)?;
    }
    super::export::run(
        settings,
        &ExportArgs {
            format: ExportFormat::Convokit,
            corpus: "cmv".to_string(),
            out: exports.join("cmv-convokit"),
        },
    )?;
    for (_, _, corpus) in CORPORA {
        super::export::run(
            settings,
            &ExportArgs {
                format: ExportFormat::Parquet,
                corpus: corpus.to_string(),
                out: exports.join(format!("{corpus}.parquet")),
            },
        )?;
    }
    if !args.skip_model {
        reply_to_posts(settings, &args.model, &exports)?;
    }
    println!();
    println!("done. Look at:");
    println!(
        "  {}  (the store: `agora corpora -w {}`)",
        settings.store_path().display(),
        settings.workspace.display()
    );
    println!("  {}/  (TRL JSONL per split, build.json, ConvoKit, Parquet)", exports.display());
    println!("  `agora show cmv:q1 -w {}` prints a thread with its deltas", settings.workspace.display());
    Ok(())
}

/// Replies to each CMV example post with the default model (fetched on first use), one
/// batch, greedy, and records them with the model and sampling that produced them.
fn reply_to_posts(settings: &Settings, model: &ModelArgs, exports: &Path) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let mut posts = Vec::new();
    store.for_each_conversation("cmv", |conversation| -> anyhow::Result<()> {
        let title = conversation.meta.get("title").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let body = conversation.turns.first().map(|turn| turn.text.clone()).unwrap_or_default();
        posts.push((conversation.id.clone(), title, body));
        Ok(())
    })?;
    let engine = super::model::load_engine(model)?;
    let config = SamplingConfig {
        max_new_tokens: 80,
        repetition_penalty: 1.1,
        ..SamplingConfig::default()
    };
    let conversations: Vec<Vec<Message>> = posts
        .iter()
        .map(|(_, title, body)| {
            vec![Message::user(format!(
                "Here is a post from r/changemyview.\n\n{title}\n\n{body}\n\n{REPLY_INSTRUCTION}"
            ))]
        })
        .collect();
    eprintln!("replying to {} posts with {}", posts.len(), engine.path.display());
    let started = std::time::Instant::now();
    let generations = engine.chat(&conversations, &config, &mut |_, _| Control::Continue)?;
    let seconds = started.elapsed().as_secs_f64();
    let out_path = exports.join("cmv-replies.jsonl");
    let mut lines = String::new();
    for ((id, title, _), generation) in posts.iter().zip(&generations) {
        let reply = generation.text.as_deref().unwrap_or_default().trim();
        println!("\n{title}\n  -> {reply}");
        let record = serde_json::json!({
            "conversation_id": id,
            "reply": reply,
            "finish_reason": generation.finish_reason,
            "model": engine.path,
            "sampling": config,
        });
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(&out_path, lines).with_context(|| format!("cannot write {}", out_path.display()))?;
    let tokens: usize = generations.iter().map(|g| g.generated_tokens).sum();
    println!(
        "\n{tokens} tokens in {seconds:.1} s ({:.1} tokens/s, one batch) -> {}",
        tokens as f64 / seconds,
        out_path.display()
    );
    Ok(())
}

const REPLY_INSTRUCTION: &str =
    "Write a short, respectful reply that gives one argument that could change the poster's view.";

/// `examples/data` of the repository this binary was built from, else of the current folder.
fn default_examples() -> anyhow::Result<PathBuf> {
    let candidates =
        [Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data"), PathBuf::from("examples/data")];
    match candidates.iter().find(|path| path.is_dir()) {
        Some(path) => Ok(path.clone()),
        None => {
            bail!("cannot find the examples folder (looked in {}); pass --examples", candidates[1].display())
        }
    }
}
