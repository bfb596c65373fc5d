//! `agora build sft|dpo|kto`: stream a corpus through its builder into TRL JSONL files,
//! one per split (train/validation/test), plus `build.json` recording how they were made.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use agora_core::{Conversation, SplitMix64};
use agora_corpus::build::cmv::{self, CmvBuildConfig};
use agora_corpus::build::esconv::{self, EsconvBuildConfig};
use agora_corpus::build::personachat::{self, PersonaBuildConfig};
use agora_corpus::build::split::{SplitName, SplitSpec};
use agora_corpus::build::{BuildStats, ChatExample, KtoExample, PreferenceExample};
use agora_corpus::trl::{TrlLayout, TrlWriter};
use agora_corpus::{CorpusError, Format};
use anyhow::{Context, bail};
use serde_json::json;

use crate::args::{BuildArgs, BuildKind, SftLayout};
use crate::settings::Settings;

const SPLITS: [SplitName; 3] = [SplitName::Train, SplitName::Validation, SplitName::Test];

/// One output file per split.
struct SplitWriters {
    writers: Vec<TrlWriter<BufWriter<File>>>,
    spec: SplitSpec,
}

impl SplitWriters {
    fn create(
        out: &Path,
        layout: TrlLayout,
        conversational: bool,
        spec: SplitSpec,
    ) -> anyhow::Result<SplitWriters> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let writers = SPLITS
            .iter()
            .map(|split| {
                TrlWriter::create(&out.join(format!("{}.jsonl", split.file_stem())), layout, conversational)
            })
            .collect::<Result<_, _>>()?;
        Ok(SplitWriters { writers, spec })
    }

    fn writer(&mut self, group: &str) -> &mut TrlWriter<BufWriter<File>> {
        let split = self.spec.assign(group);
        let position = SPLITS.iter().position(|s| *s == split).unwrap_or(0);
        &mut self.writers[position]
    }

    /// Records written per split, in train, validation, test order.
    fn finish(self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let mut counts = serde_json::Map::new();
        for (split, writer) in SPLITS.iter().zip(self.writers) {
            counts.insert(split.file_stem().to_string(), writer.finish()?.into());
        }
        Ok(counts)
    }
}

/// Every builder the CLI knows, chosen from the build kind and the corpus format.
enum Builder {
    CmvSft(CmvBuildConfig),
    CmvDpo(CmvBuildConfig),
    CmvKto(CmvBuildConfig),
    Esconv(EsconvBuildConfig),
    PersonaChat(PersonaBuildConfig),
}

impl Builder {
    fn choose(kind: BuildKind, format: Format, args: &BuildArgs) -> anyhow::Result<Builder> {
        let cmv_config = CmvBuildConfig {
            system_prompt: args.system.clone(),
            any_giver: args.any_giver,
            negatives_per_positive: args.negatives,
            kto_negatives_per_positive: args.negatives,
            ..CmvBuildConfig::default()
        };
        Ok(match (kind, format) {
            (BuildKind::Sft, Format::Cmv) => Builder::CmvSft(cmv_config),
            (BuildKind::Dpo, Format::Cmv) => Builder::CmvDpo(cmv_config),
            (BuildKind::Kto, Format::Cmv) => Builder::CmvKto(cmv_config),
            (BuildKind::Sft, Format::Esconv) => Builder::Esconv(EsconvBuildConfig::default()),
            (BuildKind::Sft, Format::PersonaChat) => Builder::PersonaChat(PersonaBuildConfig::default()),
            (kind, format) => bail!(
                "no {} builder for {} corpora (sft: cmv, esconv, personachat; dpo and kto: cmv)",
                kind_name(kind),
                format.name()
            ),
        })
    }

    fn layout(&self, sft_layout: SftLayout) -> TrlLayout {
        match self {
            Builder::CmvDpo(_) => TrlLayout::Preference,
            Builder::CmvKto(_) => TrlLayout::Unpaired,
            _ => match sft_layout {
                SftLayout::Messages => TrlLayout::Messages,
                SftLayout::PromptCompletion => TrlLayout::PromptCompletion,
            },
        }
    }

    /// Builds the examples of one conversation and writes each to its split.
    fn write(
        &self,
        conversation: &Conversation,
        seed: u64,
        writers: &mut SplitWriters,
        stats: &mut BuildStats,
    ) -> Result<(), CorpusError> {
        // Negatives are drawn from a generator seeded per conversation, so adding or
        // removing other conversations never changes this one's pairs.
        let mut rng = SplitMix64::new(seed ^ fingerprint(&conversation.id));
        match self {
            Builder::CmvSft(config) => write_chats(cmv::sft_examples(conversation, config, stats), writers),
            Builder::Esconv(config) => {
                write_chats(esconv::strategy_examples(conversation, config, stats), writers)
            }
            Builder::PersonaChat(config) => {
                write_chats(personachat::persona_examples(conversation, config, stats), writers)
            }
            Builder::CmvDpo(config) => {
                let examples: Vec<PreferenceExample> =
                    cmv::dpo_examples(conversation, config, &mut rng, stats);
                examples
                    .iter()
                    .try_for_each(|example| writers.writer(&example.group).write_preference(example))
            }
            Builder::CmvKto(config) => {
                let examples: Vec<KtoExample> = cmv::kto_examples(conversation, config, &mut rng, stats);
                examples.iter().try_for_each(|example| writers.writer(&example.group).write_kto(example))
            }
        }
    }
}

fn write_chats(examples: Vec<ChatExample>, writers: &mut SplitWriters) -> Result<(), CorpusError> {
    examples.iter().try_for_each(|example| writers.writer(&example.group).write_chat(example))
}

fn kind_name(kind: BuildKind) -> &'static str {
    match kind {
        BuildKind::Sft => "sft",
        BuildKind::Dpo => "dpo",
        BuildKind::Kto => "kto",
    }
}

/// FNV-1a of a conversation id, to derive its sampling seed.
fn fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn run(settings: &Settings, args: &BuildArgs) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let Some(format_name) = store.corpus_format(&args.corpus)? else {
        bail!("no corpus `{}` in {} (see `agora corpora`)", args.corpus, store.path().display());
    };
    let format = Format::from_name(&format_name)
        .with_context(|| format!("corpus `{}` has unknown format `{format_name}`", args.corpus))?;
    let spec = SplitSpec::parse(&args.split, args.seed).context("--split")?;
    let builder = Builder::choose(args.kind, format, args)?;
    let layout = builder.layout(args.layout);
    let conversational = !args.standard;
    let mut writers = SplitWriters::create(&args.out, layout, conversational, spec)?;
    let mut stats = BuildStats::default();
    let progress = crate::output::counter("conversations");
    store.for_each_conversation(&args.corpus, |conversation| -> anyhow::Result<()> {
        builder.write(&conversation, args.seed, &mut writers, &mut stats)?;
        progress.inc(1);
        Ok(())
    })?;
    progress.finish_and_clear();
    let counts = writers.finish()?;
    let manifest = json!({
        "corpus": args.corpus,
        "format": format_name,
        "kind": kind_name(args.kind),
        "layout": layout.name(),
        "conversational": conversational,
        "split": args.split,
        "seed": args.seed,
        "negatives": args.negatives,
        "any_giver": args.any_giver,
        "system": args.system,
        "records": counts,
        "conversations": stats.conversations,
        "examples": stats.examples,
        "skipped_and_notes": stats.counts,
    });
    let manifest_path = args.out.join("build.json");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    if settings.json {
        return crate::output::print_json(&manifest);
    }
    println!(
        "{} {} examples from {} conversations of `{}` ({}{})",
        stats.examples,
        kind_name(args.kind),
        stats.conversations,
        args.corpus,
        layout.name(),
        if conversational { ", conversational" } else { ", standard" }
    );
    for (split, records) in &counts {
        println!("  {split}: {records} -> {}", args.out.join(format!("{split}.jsonl")).display());
    }
    for (note, count) in &stats.counts {
        println!("  {note}: {count}");
    }
    Ok(())
}
