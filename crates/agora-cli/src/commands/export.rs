//! `agora export convokit|parquet|jsonl`: write a stored corpus in another format,
//! streaming one conversation at a time.

use std::fs::File;
use std::io::{BufWriter, Write};

use agora_corpus::convokit::{ConvokitConfig, ConvokitWriter};
use agora_corpus::parquet_export::ParquetTurnWriter;
use anyhow::{Context, bail};
use serde_json::json;

use crate::args::{ExportArgs, ExportFormat};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &ExportArgs) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    if store.corpus_format(&args.corpus)?.is_none() {
        bail!("no corpus `{}` in {} (see `agora corpora`)", args.corpus, store.path().display());
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let progress = crate::output::counter("conversations");
    let summary = match args.format {
        ExportFormat::Convokit => {
            let config =
                ConvokitConfig { corpus_name: Some(args.corpus.clone()), ..ConvokitConfig::default() };
            let mut writer = ConvokitWriter::with_config(&args.out, config)?;
            store.for_each_conversation(&args.corpus, |conversation| -> anyhow::Result<()> {
                writer.write(&conversation)?;
                progress.inc(1);
                Ok(())
            })?;
            let written = writer.finish()?;
            json!({
                "conversations": written.conversations,
                "utterances": written.utterances,
                "speakers": written.speakers,
                "extra_roots": written.extra_roots,
            })
        }
        ExportFormat::Parquet => {
            let mut writer = ParquetTurnWriter::new(&args.out)?;
            store.for_each_conversation(&args.corpus, |conversation| -> anyhow::Result<()> {
                writer.write(&conversation)?;
                progress.inc(1);
                Ok(())
            })?;
            json!({ "conversations": progress.position(), "rows": writer.finish()? })
        }
        ExportFormat::Jsonl => {
            let file =
                File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
            let mut out = BufWriter::new(file);
            store.for_each_conversation(&args.corpus, |conversation| -> anyhow::Result<()> {
                serde_json::to_writer(&mut out, &conversation)?;
                out.write_all(b"\n")?;
                progress.inc(1);
                Ok(())
            })?;
            out.flush().with_context(|| format!("cannot write {}", args.out.display()))?;
            json!({ "conversations": progress.position() })
        }
    };
    progress.finish_and_clear();
    if settings.json {
        let mut value = summary;
        value["out"] = json!(args.out);
        return crate::output::print_json(&value);
    }
    let counts: Vec<String> = summary
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{value} {}", key.replace('_', " ")))
        .collect();
    println!("exported `{}` to {}: {}", args.corpus, args.out.display(), counts.join(", "));
    Ok(())
}
