//! `agora report`: what an experiment produced, read back from the store — discussion
//! turns and empty replies, label distributions with means, confidence intervals and
//! Krippendorff's alpha between annotators, judge means per rubric dimension with
//! confidence intervals and unparsed counts, continuations per strategy.

use std::collections::BTreeMap;

use agora_core::Score;
use agora_eval::{Distribution, Level, Summary, krippendorff_alpha, krippendorff_alpha_labels, summarize};
use agora_store::Store;
use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use super::annotate::StoredLabel;
use super::continuation::StoredContinuation;
use super::judge::StoredScore;
use super::{LoadedExperiment, Stage, job_id, stored_units};
use crate::args::ReportArgs;
use crate::settings::Settings;

/// An experiment named directly, or through its file.
pub fn experiment_name(reference: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(reference);
    if reference.ends_with(".toml") || path.is_file() {
        return Ok(LoadedExperiment::load(path)?.experiment.name);
    }
    Ok(reference.to_string())
}

pub fn run(settings: &Settings, args: &ReportArgs) -> anyhow::Result<()> {
    let name = experiment_name(&args.experiment)?;
    let store = settings.open_store().with_context(|| format!("experiment `{name}`"))?;
    let report = build(&store, &name)?;
    if report.stages.is_empty() {
        anyhow::bail!("experiment `{name}` has no results in {}", settings.store_path().display());
    }
    if settings.json {
        return crate::output::print_json(&report);
    }
    print!("{}", render(&report));
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub experiment: String,
    pub stages: Vec<serde_json::Value>,
    #[serde(skip)]
    text: Vec<String>,
}

fn summary_text(summary: &Option<Summary>) -> String {
    match summary {
        Some(Summary { n, mean, ci_low: Some(low), ci_high: Some(high), confidence, .. }) => {
            format!("mean {mean:.2} ({:.0}% CI {low:.2}–{high:.2}, n {n})", confidence * 100.0)
        }
        Some(Summary { n, mean, .. }) => format!("mean {mean:.2} (n {n})"),
        None => "no parsed values".to_string(),
    }
}

fn share(part: usize, whole: usize) -> String {
    if whole == 0 { "0%".into() } else { format!("{:.1}%", 100.0 * part as f64 / whole as f64) }
}

pub fn build(store: &Store, name: &str) -> anyhow::Result<Report> {
    let mut report = Report { experiment: name.to_string(), stages: Vec::new(), text: Vec::new() };
    discussions(store, name, &mut report)?;
    continuations(store, name, &mut report)?;
    annotations(store, name, &mut report)?;
    judgements(store, name, &mut report)?;
    Ok(report)
}

fn status(store: &Store, job: &str) -> anyhow::Result<Option<String>> {
    Ok(store.job(job)?.map(|job| job.status))
}

fn discussions(store: &Store, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let job = job_id(name, Stage::Simulate);
    let Some(status) = status(store, &job)? else { return Ok(()) };
    let units: Vec<(String, serde_json::Value)> = stored_units(store, &job)?;
    let mut discussions = std::collections::BTreeSet::new();
    let (mut user, mut moderator, mut empty, mut cut, mut words) =
        (0usize, 0usize, 0usize, 0usize, Vec::new());
    let mut by_speaker: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (key, unit) in &units {
        discussions.insert(key.split('/').next().unwrap_or_default().to_string());
        let text = unit["text"].as_str().unwrap_or_default();
        let is_moderator = unit["role"] == "moderator";
        if is_moderator {
            moderator += 1
        } else {
            user += 1
        }
        let entry = by_speaker.entry(unit["speaker"].as_str().unwrap_or_default().to_string()).or_default();
        entry.0 += 1;
        if text.is_empty() {
            empty += 1;
            entry.1 += 1;
        } else {
            words.push(text.split_whitespace().count() as f64);
        }
        if unit["finish_reason"] == "length" {
            cut += 1;
        }
    }
    let turns = units.len();
    let length = summarize(&words, 0.95);
    report.text.push(format!(
        "discussions ({job}: {status}): {} discussions, {turns} turns ({user} by users, {moderator} by the moderator), \
         {empty} empty ({}), {cut} cut at max_tokens; words per comment: {}",
        discussions.len(),
        share(empty, turns),
        summary_text(&length)
    ));
    for (speaker, (count, empty)) in &by_speaker {
        report.text.push(format!("  {speaker}: {count} turns, {empty} empty"));
    }
    report.stages.push(json!({
        "stage": "simulate", "job": job, "status": status, "discussions": discussions.len(), "turns": turns,
        "user_turns": user, "moderator_turns": moderator, "empty": empty, "cut_at_max_tokens": cut,
        "words_per_comment": length,
        "by_speaker": by_speaker.iter().map(|(speaker, (count, empty))| json!({"speaker": speaker, "turns": count, "empty": empty})).collect::<Vec<_>>(),
    }));
    Ok(())
}

fn annotations(store: &Store, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let job = job_id(name, Stage::Annotate);
    let Some(status) = status(store, &job)? else { return Ok(()) };
    let labels: Vec<(String, StoredLabel)> = stored_units(store, &job)?;
    // Per scale: every label, per annotator values, and per comment values (for alpha).
    let mut scales: BTreeMap<String, Vec<&agora_core::Annotation>> = BTreeMap::new();
    for (_, label) in &labels {
        scales.entry(label.record.annotation.scale.clone()).or_default().push(&label.record.annotation);
    }
    for (scale, annotations) in scales {
        let total = annotations.len();
        let unparsed = annotations.iter().filter(|a| a.score.is_unparsed()).count();
        let shown: Vec<String> = annotations.iter().filter_map(|a| score_label(&a.score)).collect();
        let distribution = Distribution::from_labels(&shown);
        let values: Vec<f64> = annotations.iter().filter_map(|a| a.score.value()).collect();
        let overall = summarize(&values, 0.95);
        let mut per_annotator: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut per_comment: BTreeMap<(&str, u32), Vec<&Score>> = BTreeMap::new();
        for annotation in &annotations {
            if let Some(value) = annotation.score.value() {
                per_annotator.entry(&annotation.annotator).or_default().push(value);
            }
            per_comment
                .entry((&annotation.conversation_id, annotation.turn_index))
                .or_default()
                .push(&annotation.score);
        }
        let numeric_units: Vec<Vec<f64>> =
            per_comment.values().map(|scores| scores.iter().filter_map(|s| s.value()).collect()).collect();
        let label_units: Vec<Vec<String>> = per_comment
            .values()
            .map(|scores| {
                scores
                    .iter()
                    .filter_map(|s| match s {
                        Score::Label { label } => Some(label.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let numeric = !values.is_empty();
        let (alpha_interval, alpha_ordinal, alpha_nominal) = if numeric {
            (
                krippendorff_alpha(&numeric_units, Level::Interval),
                krippendorff_alpha(&numeric_units, Level::Ordinal),
                None,
            )
        } else {
            (None, None, krippendorff_alpha_labels(&label_units))
        };
        let annotators = per_annotator
            .len()
            .max(annotations.iter().map(|a| &a.annotator).collect::<std::collections::BTreeSet<_>>().len());
        report.text.push(format!(
            "annotation {scale} ({job}: {status}): {total} labels by {annotators} annotators, {unparsed} unparsed ({}, kept raw)",
            share(unparsed, total)
        ));
        let bars: Vec<String> = distribution
            .counts
            .iter()
            .map(|(label, count, part)| format!("{label}: {count} ({:.0}%)", part * 100.0))
            .collect();
        report
            .text
            .push(format!("  labels: {}", if bars.is_empty() { "none".into() } else { bars.join(", ") }));
        if numeric {
            report.text.push(format!("  {}", summary_text(&overall)));
        }
        for (annotator, values) in &per_annotator {
            report.text.push(format!("  {annotator}: {}", summary_text(&summarize(values, 0.95))));
        }
        let alpha_text = |alpha: &Option<agora_eval::Alpha>| match alpha {
            Some(alpha) => format!("{:.3} ({} comments)", alpha.alpha, alpha.units),
            None => "undefined (fewer than two labels per comment, or no variation)".into(),
        };
        if numeric {
            report.text.push(format!(
                "  Krippendorff's alpha: interval {}, ordinal {}",
                alpha_text(&alpha_interval),
                alpha_text(&alpha_ordinal)
            ));
        } else {
            report.text.push(format!("  Krippendorff's alpha (nominal): {}", alpha_text(&alpha_nominal)));
        }
        report.stages.push(json!({
            "stage": "annotate", "job": job, "status": status, "scale": scale, "labels": total, "unparsed": unparsed,
            "distribution": distribution, "summary": overall,
            "per_annotator": per_annotator.iter().map(|(annotator, values)| json!({"annotator": annotator, "summary": summarize(values, 0.95)})).collect::<Vec<_>>(),
            "alpha": {"interval": alpha_interval, "ordinal": alpha_ordinal, "nominal": alpha_nominal},
        }));
    }
    Ok(())
}

/// How a score reads in a distribution: the value or label; unparsed ones are counted apart.
fn score_label(score: &Score) -> Option<String> {
    match score {
        Score::Value { value } if value.fract() == 0.0 => Some(format!("{value:.0}")),
        Score::Value { value } => Some(value.to_string()),
        Score::Label { label } => Some(label.clone()),
        Score::Unparsed { .. } => None,
    }
}

fn judgements(store: &Store, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let job = job_id(name, Stage::Judge);
    let Some(status) = status(store, &job)? else { return Ok(()) };
    let scores: Vec<(String, StoredScore)> = stored_units(store, &job)?;
    let Some((_, first)) = scores.first() else {
        report.text.push(format!("judge ({job}: {status}): no scores yet"));
        return Ok(());
    };
    let rubric = first.rubric.clone();
    // Per dimension: repeats of one item are averaged first, so an item asked 3 times
    // weighs as much as one asked once.
    let mut per_dimension: BTreeMap<String, BTreeMap<String, Vec<&Score>>> = BTreeMap::new();
    for (_, stored) in &scores {
        for (dimension, score) in &stored.scores {
            per_dimension
                .entry(dimension.clone())
                .or_default()
                .entry(stored.item.clone())
                .or_default()
                .push(score);
        }
    }
    report.text.push(format!("judge {rubric} ({job}: {status}): {} replies from the judge", scores.len()));
    let mut dimensions = Vec::new();
    for (dimension, items) in &per_dimension {
        let all: Vec<&Score> = items.values().flatten().copied().collect();
        let unparsed = all.iter().filter(|score| score.is_unparsed()).count();
        let item_means: Vec<f64> = items
            .values()
            .filter_map(|scores| {
                let values: Vec<f64> = scores.iter().filter_map(|score| score.value()).collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            })
            .collect();
        let labels: Vec<String> = all
            .iter()
            .filter_map(|score| match score {
                Score::Label { label } => Some(label.clone()),
                _ => None,
            })
            .collect();
        let summary = summarize(&item_means, 0.95);
        let distribution = Distribution::from_labels(&labels);
        let mut parts = Vec::new();
        if !item_means.is_empty() {
            parts.push(summary_text(&summary));
        }
        if !labels.is_empty() {
            let shares: Vec<String> = distribution
                .counts
                .iter()
                .map(|(label, count, part)| format!("{label} {count} ({:.0}%)", part * 100.0))
                .collect();
            parts.push(shares.join(", "));
        }
        parts.push(format!(
            "{unparsed} of {} unparsed ({}, kept raw)",
            all.len(),
            share(unparsed, all.len())
        ));
        let line = format!("  {dimension}: {}", parts.join("; "));
        report.text.push(line);
        dimensions.push(json!({"dimension": dimension, "items": items.len(), "scores": all.len(), "unparsed": unparsed, "summary": summary, "verdicts": distribution}));
    }
    report.stages.push(json!({"stage": "judge", "job": job, "status": status, "rubric": rubric, "replies": scores.len(), "dimensions": dimensions}));
    Ok(())
}

fn continuations(store: &Store, name: &str, report: &mut Report) -> anyhow::Result<()> {
    let job = job_id(name, Stage::Continue);
    let Some(status) = status(store, &job)? else { return Ok(()) };
    let units: Vec<(String, StoredContinuation)> = stored_units(store, &job)?;
    let mut per_strategy: BTreeMap<&str, (usize, usize, Vec<f64>)> = BTreeMap::new();
    for (_, unit) in &units {
        let entry = per_strategy.entry(&unit.strategy).or_default();
        entry.0 += 1;
        if unit.text.trim().is_empty() {
            entry.1 += 1;
        } else {
            entry.2.push(unit.text.split_whitespace().count() as f64);
        }
    }
    report.text.push(format!(
        "continuations ({job}: {status}): {} replies, {} strategies",
        units.len(),
        per_strategy.len()
    ));
    let mut rows = Vec::new();
    for (strategy, (count, empty, words)) in &per_strategy {
        let summary = summarize(words, 0.95);
        report
            .text
            .push(format!("  {strategy}: {count} replies, {empty} empty; words {}", summary_text(&summary)));
        rows.push(json!({"strategy": strategy, "replies": count, "empty": empty, "words": summary}));
    }
    report.stages.push(json!({"stage": "continue", "job": job, "status": status, "replies": units.len(), "strategies": rows}));
    Ok(())
}

pub fn render(report: &Report) -> String {
    let mut out = format!("experiment {}\n", report.experiment);
    for line in &report.text {
        out.push_str(line);
        out.push('\n');
    }
    out
}
