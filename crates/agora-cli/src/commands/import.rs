//! `agora import FORMAT PATH`: stream a corpus into the store (atomic and idempotent),
//! or store SDF personas, texts and annotations as named collections.

use std::path::Path;

use agora_corpus::{CorpusError, Format, ImportOptions, ImportReport, sdf};
use agora_store::{ImportCounts, NamedText, Store};
use anyhow::Context;
use serde_json::json;

use crate::args::{ImportArgs, ImportFormat};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &ImportArgs) -> anyhow::Result<()> {
    let mut store = settings.open_or_create_store()?;
    let options = ImportOptions { keep_going: args.keep_going, merge_consecutive: args.merge_consecutive };
    let collection = match args.format {
        ImportFormat::Cmv => Collection::Corpus(Format::Cmv),
        ImportFormat::Esconv => Collection::Corpus(Format::Esconv),
        ImportFormat::Personachat => Collection::Corpus(Format::PersonaChat),
        ImportFormat::Sdf => Collection::Corpus(Format::SdfConversation),
        ImportFormat::SdfPersonas => Collection::Personas,
        ImportFormat::SdfTexts => Collection::Texts,
        ImportFormat::SdfAnnotations => Collection::Annotations,
    };
    let name = args.name.clone().unwrap_or_else(|| match collection {
        Collection::Corpus(format) => format.name().to_string(),
        _ => collection_name(&args.path),
    });
    let what = match collection {
        Collection::Corpus(format) => {
            let (report, counts) = import_corpus(&store, format, &args.path, &name, &options)
                .with_context(|| format!("import {} {}", format.name(), args.path.display()))?;
            return print_report(settings, &name, &report, counts);
        }
        Collection::Personas => {
            let personas = sdf::read_personas(&args.path).context("import sdf-personas")?;
            store.put_personas(&name, &personas)?;
            format!("{} personas", personas.len())
        }
        Collection::Texts => {
            let texts: Vec<NamedText> = sdf::read_texts(&args.path)
                .context("import sdf-texts")?
                .into_iter()
                .map(|text| NamedText { name: text.name, text: text.text })
                .collect();
            store.put_texts(&name, &texts)?;
            format!("{} texts", texts.len())
        }
        Collection::Annotations => {
            let mut report = ImportReport::default();
            let annotations =
                sdf::read_annotations(&args.path, &mut report).context("import sdf-annotations")?;
            store.put_annotations(&args.path.display().to_string(), &annotations)?;
            let unparsed = annotations.iter().filter(|a| a.score.is_unparsed()).count();
            format!("{} annotations ({unparsed} unparsed, kept raw)", annotations.len())
        }
    };
    if settings.json {
        crate::output::print_json(&json!({ "collection": name, "imported": what }))
    } else {
        println!("{name}: imported {what}");
        Ok(())
    }
}

/// What an import fills: a corpus of conversations, or a named collection.
#[derive(Debug, Clone, Copy)]
enum Collection {
    Corpus(Format),
    Personas,
    Texts,
    Annotations,
}

/// Streams `path` into corpus `name`, one transaction for the whole import.
pub fn import_corpus(
    store: &Store,
    format: Format,
    path: &Path,
    name: &str,
    options: &ImportOptions,
) -> anyhow::Result<(ImportReport, ImportCounts)> {
    let mut batch = store.begin_import(name, format.name())?;
    let progress = crate::output::counter("conversations");
    let report = agora_corpus::import(format, path, options, &mut |conversation| {
        batch.add(&conversation).map_err(|e| CorpusError::Sink(Box::new(e)))?;
        progress.inc(1);
        Ok(())
    });
    progress.finish_and_clear();
    let report = report?;
    let counts = batch.finish(&path.display().to_string(), &report_json(&report))?;
    Ok((report, counts))
}

fn report_json(report: &ImportReport) -> serde_json::Value {
    json!({
        "conversations": report.conversations,
        "turns": report.turns,
        "bytes": report.bytes,
        "skipped": report.skipped,
        "skipped_examples": report.skipped_examples,
        "notes": report.notes,
    })
}

fn print_report(
    settings: &Settings,
    name: &str,
    report: &ImportReport,
    counts: ImportCounts,
) -> anyhow::Result<()> {
    if settings.json {
        let mut value = report_json(report);
        value["corpus"] = json!(name);
        value["store"] = json!(counts);
        return crate::output::print_json(&value);
    }
    println!("corpus {name}");
    print!("{report}");
    println!("store: {} added, {} unchanged, {} replaced", counts.added, counts.unchanged, counts.replaced);
    if report.skipped > 0 {
        eprintln!("warning: {} records skipped (listed above)", report.skipped);
    }
    Ok(())
}

/// Default collection name: the file stem or folder name.
fn collection_name(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "collection".to_string())
}
