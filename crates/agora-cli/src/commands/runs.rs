//! `agora runs [show RUN | generate RUN -p ...]`: the workspace's training runs, one
//! run's summary with its loss curves drawn as SVG, and the tuned model's replies next to
//! the base model's.

use std::path::{Path, PathBuf};

use agora_train::model::{load_for_generation, load_tuned};
use agora_train::plot::{Series, line_chart_svg};
use agora_train::trainer;
use serde_json::{Map, Value, json};

use super::train::{open_run, short_id, training_model_path};
use crate::args::{RunsArgs, RunsCommand};
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &RunsArgs) -> anyhow::Result<()> {
    match &args.command {
        None => list(settings, args.sweep.as_deref()),
        Some(RunsCommand::Show { run }) => show(settings, run),
        Some(RunsCommand::Generate { run, prompt, max_new_tokens, models_dir }) => {
            print_side_by_side(settings, run, prompt, *max_new_tokens, models_dir.as_deref())
        }
    }
}

fn list(settings: &Settings, sweep: Option<&str>) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let runs = store.runs(sweep)?;
    if settings.json {
        return crate::output::print_json(&runs);
    }
    if runs.is_empty() {
        println!("no runs yet (agora train sft|dpo ...)");
        return Ok(());
    }
    println!(
        "{:<34} {:<6} {:<14} {:>9} {:>10} {:>10}  model",
        "run", "method", "status", "steps", "loss", "eval loss"
    );
    for record in &runs {
        let summary = record.summary.as_ref();
        let number = |key: &str| {
            summary
                .and_then(|summary| summary.get(key))
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |v| format!("{v:.4}"))
        };
        let steps = summary
            .and_then(|summary| {
                Some(format!("{}/{}", summary.get("steps")?.as_u64()?, summary.get("total_steps")?.as_u64()?))
            })
            .unwrap_or_else(|| "-".to_string());
        println!(
            "{:<34} {:<6} {:<14} {:>9} {:>10} {:>10}  {}",
            record.id,
            record.method,
            record.status,
            steps,
            number("final_train_loss"),
            number("final_eval_loss"),
            record.model
        );
    }
    Ok(())
}

fn show(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let run = open_run(&store, id)?;
    let config = run.read_config()?;
    let summary = run.read_summary()?;
    let metrics = run.read_metrics()?;
    let charts = draw_curves(&run.path, &metrics)?;
    if settings.json {
        return crate::output::print_json(&json!({
            "id": run.id,
            "dir": run.path,
            "config": config,
            "summary": summary,
            "charts": charts,
        }));
    }
    println!("run {} ({})", run.id, run.path.display());
    println!(
        "{} on {}{}, seed {}, {} examples per batch x {} accumulation, learning rate {:e} ({:?})",
        config.method.name(),
        config.model,
        config.lora.as_ref().map_or(String::new(), |lora| format!(
            " with LoRA rank {} alpha {} on {}",
            lora.rank,
            lora.alpha,
            lora.target_modules.join(",")
        )),
        config.seed,
        config.training.batch_size,
        config.training.gradient_accumulation_steps,
        config.optimizer.learning_rate,
        config.schedule.kind
    );
    match &summary {
        Some(summary) => {
            println!(
                "{} after {}/{} steps in {:.1} s, {} trained tokens",
                summary.status, summary.steps, summary.total_steps, summary.seconds, summary.trained_tokens
            );
            for (name, value) in &summary.last_metrics {
                if name != "step" {
                    println!("  {name:<24} {value}");
                }
            }
        }
        None => println!(
            "no summary yet: the run is going on, or stopped (resume it with --resume {})",
            short_id(&run.id)
        ),
    }
    for chart in charts {
        println!("chart: {}", chart.display());
    }
    Ok(())
}

/// Writes `loss.svg` (train and eval loss by step) and, for DPO, `rewards.svg`.
fn draw_curves(dir: &Path, metrics: &[Map<String, Value>]) -> anyhow::Result<Vec<PathBuf>> {
    let series = |key: &str, name: &str| Series {
        name: name.to_string(),
        points: metrics
            .iter()
            .filter_map(|record| Some((record.get("step")?.as_f64()?, record.get(key)?.as_f64()?)))
            .collect(),
    };
    let mut charts = Vec::new();
    let mut write = |file: &str, title: &str, lines: Vec<Series>| -> anyhow::Result<()> {
        if lines.iter().all(|line| line.points.is_empty()) {
            return Ok(());
        }
        let path = dir.join(file);
        std::fs::write(&path, line_chart_svg(title, "step", &lines))
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
        charts.push(path);
        Ok(())
    };
    write("loss.svg", "loss", vec![series("loss", "train loss"), series("eval/loss", "eval loss")])?;
    write(
        "rewards.svg",
        "DPO rewards",
        vec![
            series("rewards/accuracies", "accuracy"),
            series("rewards/margins", "margin"),
            series("eval/rewards/accuracies", "eval accuracy"),
        ],
    )?;
    Ok(charts)
}

/// Greedy replies of the run's base model and of its tuned model to each prompt.
pub fn print_side_by_side(
    settings: &Settings,
    id: &str,
    prompts: &[String],
    max_new_tokens: usize,
    models_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let run = open_run(&store, id)?;
    let config = run.read_config()?;
    let final_dir = run.path.join("final");
    anyhow::ensure!(final_dir.is_dir(), "run {} has no final/ weights yet (did it finish?)", run.id);
    let base_path = training_model_path(&config.model, models_dir)?;
    let device = trainer::device();
    let tuned = load_tuned(&base_path, &final_dir, &device)?;
    let tuned_replies = tuned.greedy_replies(prompts, max_new_tokens)?;
    // Under LoRA the base model is the tuned one with its adapters off: no second load.
    let base_replies = match tuned.with_base(|_| tuned.greedy_replies(prompts, max_new_tokens)) {
        Some(replies) => replies?,
        None => {
            drop(tuned);
            load_for_generation(&base_path, &device)?.greedy_replies(prompts, max_new_tokens)?
        }
    };
    if settings.json {
        let rows: Vec<Value> = prompts
            .iter()
            .zip(base_replies.iter().zip(&tuned_replies))
            .map(|(prompt, (base, tuned))| json!({"prompt": prompt, "base": base, "tuned": tuned}))
            .collect();
        return crate::output::print_json(&json!({"run": run.id, "model": config.model, "replies": rows}));
    }
    for (prompt, (base, tuned)) in prompts.iter().zip(base_replies.iter().zip(&tuned_replies)) {
        println!("### {prompt}");
        println!("base:  {}", base.trim());
        println!("tuned: {}", tuned.trim());
    }
    Ok(())
}
