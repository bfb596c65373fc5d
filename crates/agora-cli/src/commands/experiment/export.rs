//! `agora experiment export`: an experiment's results as flat tables — `turns`,
//! `annotations`, `judgements`, `continuations` — in JSONL, CSV or Parquet, or its
//! discussions (and their annotations) as the framework's own output JSON files.

use std::path::Path;

use agora_corpus::sdf;
use agora_corpus::table::{Cell, Column, ColumnType, TableFormat, TableWriter};
use agora_sim::discussion::corpus_name;
use agora_store::Store;
use anyhow::Context;

use super::annotate::StoredLabel;
use super::continuation::StoredContinuation;
use super::judge::StoredScore;
use super::report::experiment_name;
use super::{Stage, job_id, stored_units};
use crate::args::{ExperimentExportArgs, ExperimentExportFormat};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &ExperimentExportArgs) -> anyhow::Result<()> {
    let name = experiment_name(&args.experiment)?;
    let store = settings.open_store()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let written = match args.format {
        ExperimentExportFormat::Sdf => sdf_files(&store, &name, &args.out)?,
        ExperimentExportFormat::Jsonl => tables(&store, &name, &args.out, TableFormat::Jsonl)?,
        ExperimentExportFormat::Csv => tables(&store, &name, &args.out, TableFormat::Csv)?,
        ExperimentExportFormat::Parquet => tables(&store, &name, &args.out, TableFormat::Parquet)?,
    };
    if written.is_empty() {
        anyhow::bail!("experiment `{name}` has no results to export");
    }
    if settings.json {
        let files: Vec<_> =
            written.iter().map(|(path, rows)| serde_json::json!({"path": path, "rows": rows})).collect();
        return crate::output::print_json(&files);
    }
    for (path, rows) in &written {
        println!("{path}: {rows} rows");
    }
    Ok(())
}

fn text(value: impl Into<String>) -> Cell {
    Cell::Text(value.into())
}

fn column(name: &str, kind: ColumnType) -> Column {
    Column { name: name.to_string(), kind }
}

fn score_cells(score: &agora_core::Score) -> [Cell; 3] {
    match score {
        agora_core::Score::Value { value } => [Cell::Float(*value), Cell::Null, Cell::Bool(false)],
        agora_core::Score::Label { label } => [Cell::Null, text(label.clone()), Cell::Bool(false)],
        agora_core::Score::Unparsed { .. } => [Cell::Null, Cell::Null, Cell::Bool(true)],
    }
}

fn tables(store: &Store, name: &str, out: &Path, format: TableFormat) -> anyhow::Result<Vec<(String, u64)>> {
    let mut written = Vec::new();
    let path = |table: &str| out.join(format!("{table}.{}", format.extension()));
    use ColumnType::{Bool, Float, Integer, Text};

    let turns: Vec<(String, serde_json::Value)> = stored_units(store, &job_id(name, Stage::Simulate))?;
    if !turns.is_empty() {
        let file = path("turns");
        let mut writer = TableWriter::create(
            &file,
            format,
            vec![
                column("discussion", Text),
                column("turn", Integer),
                column("speaker", Text),
                column("role", Text),
                column("text", Text),
                column("empty", Bool),
                column("model", Text),
                column("backend", Text),
                column("finish_reason", Text),
                column("prompt_tokens", Integer),
                column("completion_tokens", Integer),
                column("prompt_hash", Text),
                column("seed", Text),
            ],
        )?;
        for (key, unit) in &turns {
            let field = |name: &str| text(unit[name].as_str().unwrap_or_default());
            let number = |value: &serde_json::Value| value.as_i64().map_or(Cell::Null, Cell::Integer);
            writer.write_row(&[
                text(key.split('/').next().unwrap_or_default()),
                number(&unit["index"]),
                field("speaker"),
                field("role"),
                field("text"),
                Cell::Bool(unit["text"].as_str().is_none_or(str::is_empty)),
                field("model"),
                field("backend"),
                field("finish_reason"),
                number(&unit["usage"]["prompt_tokens"]),
                number(&unit["usage"]["completion_tokens"]),
                field("prompt_hash"),
                // u64 seeds do not fit Parquet's Int64: kept exact as text.
                text(unit["seed"].to_string()),
            ])?;
        }
        written.push((file.display().to_string(), writer.finish()?));
    }

    let labels: Vec<(String, StoredLabel)> = stored_units(store, &job_id(name, Stage::Annotate))?;
    if !labels.is_empty() {
        let file = path("annotations");
        let mut writer = TableWriter::create(
            &file,
            format,
            vec![
                column("conversation_id", Text),
                column("turn", Integer),
                column("annotator", Text),
                column("scale", Text),
                column("value", Float),
                column("label", Text),
                column("unparsed", Bool),
                column("raw", Text),
                column("model", Text),
                column("backend", Text),
                column("prompt_hash", Text),
            ],
        )?;
        for (_, label) in &labels {
            let annotation = &label.record.annotation;
            let [value, label_cell, unparsed] = score_cells(&annotation.score);
            writer.write_row(&[
                text(annotation.conversation_id.clone()),
                Cell::Integer(i64::from(annotation.turn_index)),
                text(annotation.annotator.clone()),
                text(annotation.scale.clone()),
                value,
                label_cell,
                unparsed,
                text(label.record.raw.clone()),
                annotation.model.clone().map_or(Cell::Null, text),
                text(label.backend.clone()),
                text(label.record.prompt_hash.clone()),
            ])?;
        }
        written.push((file.display().to_string(), writer.finish()?));
    }

    let scores: Vec<(String, StoredScore)> = stored_units(store, &job_id(name, Stage::Judge))?;
    if !scores.is_empty() {
        let file = path("judgements");
        let mut writer = TableWriter::create(
            &file,
            format,
            vec![
                column("item", Text),
                column("repeat", Integer),
                column("swapped", Bool),
                column("rubric", Text),
                column("dimension", Text),
                column("value", Float),
                column("label", Text),
                column("unparsed", Bool),
                column("raw", Text),
                column("model", Text),
                column("backend", Text),
                column("prompt_hash", Text),
            ],
        )?;
        for (_, stored) in &scores {
            for (dimension, score) in &stored.scores {
                let [value, label, unparsed] = score_cells(score);
                writer.write_row(&[
                    text(stored.item.clone()),
                    Cell::Integer(i64::from(stored.repeat)),
                    Cell::Bool(stored.swapped),
                    text(stored.rubric.clone()),
                    text(dimension.clone()),
                    value,
                    label,
                    unparsed,
                    text(stored.raw.clone()),
                    text(stored.model.clone()),
                    text(stored.backend.clone()),
                    text(stored.prompt_hash.clone()),
                ])?;
            }
        }
        written.push((file.display().to_string(), writer.finish()?));
    }

    let continuations: Vec<(String, StoredContinuation)> =
        stored_units(store, &job_id(name, Stage::Continue))?;
    if !continuations.is_empty() {
        let file = path("continuations");
        let mut writer = TableWriter::create(
            &file,
            format,
            vec![
                column("conversation_id", Text),
                column("cut_turn", Integer),
                column("strategy", Text),
                column("text", Text),
                column("raw", Text),
                column("model", Text),
                column("backend", Text),
                column("finish_reason", Text),
                column("prompt_hash", Text),
            ],
        )?;
        for (_, unit) in &continuations {
            writer.write_row(&[
                text(unit.conversation_id.clone()),
                Cell::Integer(i64::from(unit.cut_turn)),
                text(unit.strategy.clone()),
                text(unit.text.clone()),
                text(unit.raw.clone()),
                text(unit.model.clone()),
                text(unit.backend.clone()),
                text(unit.finish_reason.clone()),
                text(unit.prompt_hash.clone()),
            ])?;
        }
        written.push((file.display().to_string(), writer.finish()?));
    }
    Ok(written)
}

/// One framework discussion file per discussion (`discussions/<id>.json`) and, when the
/// experiment annotated them, one annotation file per discussion and annotator
/// (`annotations/<id>_<annotator>.json`), as the framework wrote them.
fn sdf_files(store: &Store, name: &str, out: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let corpus = corpus_name(name);
    let timestamp = agora_core::time::format_utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    let annotations_job = job_id(name, Stage::Annotate);
    let labels: Vec<(String, StoredLabel)> = stored_units(store, &annotations_job)?;
    for folder in ["discussions", "annotations"] {
        let folder = out.join(folder);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let mut written = Vec::new();
    let mut result = Ok(());
    store.for_each_conversation(&corpus, |conversation| {
        if result.is_err() {
            return Ok::<(), agora_store::StoreError>(());
        }
        result = (|| -> anyhow::Result<()> {
            let id = &conversation.source.original_id;
            let file = out.join("discussions").join(format!("{id}.json"));
            sdf::write_discussion(&file, &conversation, &timestamp)?;
            written.push((file.display().to_string(), conversation.turns.len() as u64));
            let own: Vec<agora_core::Annotation> = labels
                .iter()
                .filter(|(_, label)| label.record.annotation.conversation_id == conversation.id)
                .map(|(_, label)| label.record.annotation.clone())
                .collect();
            // The framework wrote one annotation file per annotator.
            for (annotator, value) in sdf::annotation_json_per_annotator(&conversation, &own, &timestamp)? {
                let file = out.join("annotations").join(format!("{id}_{annotator}.json"));
                sdf::write_json(&file, &value)?;
                let labels = own.iter().filter(|annotation| annotation.annotator == annotator).count();
                written.push((file.display().to_string(), labels as u64));
            }
            Ok(())
        })();
        Ok(())
    })?;
    result?;
    Ok(written)
}
