//! `agora sweep FILE`: every trial of a grid or random sweep trained as its own run
//! (registered under the sweep's id), then a table ranking the trials by the sweep's
//! metric. `--resume SWEEP` keeps finished trials, resumes stopped ones and runs the rest.

use std::path::{Path, PathBuf};

use agora_train::sweep::{Goal, read_sweep};
use agora_train::{RunDir, TrainConfig, trainer};
use serde_json::{Value, json};

use super::train::{parse_assignment, prepare, run_training};
use crate::args::SweepArgs;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &SweepArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        agora_model::engine::set_threads(threads);
    }
    let sweep = read_sweep(&args.file)?;
    let base = match (&args.base, &sweep.base) {
        (Some(base), _) => base.clone(),
        (None, Some(base)) => relative_to(&args.file, base),
        (None, None) => anyhow::bail!(
            "{}: the sweep names no base training configuration; pass --base FILE (a TOML training config)",
            args.file.display()
        ),
    };
    let store = settings.open_or_create_store()?;
    let runs_dir = args.runs_dir.clone().unwrap_or_else(|| trainer::runs_dir(&settings.workspace));
    let sweep_id = match &args.resume {
        Some(id) => id.clone(),
        None => new_sweep_id(&args.file),
    };
    let extra =
        args.set.iter().map(|assignment| parse_assignment(assignment)).collect::<anyhow::Result<Vec<_>>>()?;
    let base_config = TrainConfig::read(&base, &extra)?;
    let trials = sweep.trials(base_config.seed)?;
    eprintln!("sweep {sweep_id}: {} trials from {} on {}", trials.len(), args.file.display(), base.display());

    let mut started = 0;
    for trial in &trials {
        let mut overrides = trial.overrides.clone();
        overrides.extend(extra.iter().cloned());
        let config = TrainConfig::read(&base, &overrides)
            .map_err(|error| anyhow::anyhow!("trial {}: {error}", trial.index + 1))?;
        let existing =
            store.runs(Some(&sweep_id))?.into_iter().find(|record| record.config == config.to_json());
        match &existing {
            Some(record) if record.status == "finished" || record.status == "early-stopped" => {
                eprintln!("trial {}: done before (run {})", trial.index + 1, record.id);
                continue;
            }
            None if args.max_trials.is_some_and(|max| started >= max) => continue,
            _ => {}
        }
        started += 1;
        eprintln!("trial {}/{}: {}", trial.index + 1, trials.len(), describe(&trial.overrides));
        let outcome = prepare(settings, &store, &config, args.models_dir.as_deref()).and_then(|prepared| {
            let run = match &existing {
                Some(record) => RunDir::open(Path::new(&record.dir))?,
                None => {
                    let run = RunDir::create(&runs_dir, config.method.name())?;
                    run.write_config(&config)?;
                    run
                }
            };
            run_training(settings, &store, &config, &run, prepared, &runs_dir, Some(&sweep_id))
        });
        if let Err(error) = outcome {
            // One failed trial does not stop the sweep; it is reported, and the table
            // below lists the trials that ran.
            eprintln!("trial {} failed: {error:#}", trial.index + 1);
        }
    }
    report(settings, &store, &sweep_id, &sweep)
}

fn report(
    settings: &Settings,
    store: &agora_store::Store,
    sweep_id: &str,
    sweep: &agora_train::sweep::Sweep,
) -> anyhow::Result<()> {
    let runs = store.runs(Some(sweep_id))?;
    let (metric, goal) = match &sweep.metric {
        Some(metric) => (metric.name.clone(), metric.goal),
        None => {
            let has_eval = runs.iter().any(|record| final_metric(record, "eval/loss").is_some());
            (if has_eval { "eval/loss" } else { "loss" }.to_string(), Goal::Minimize)
        }
    };
    let mut ranked: Vec<(Option<f64>, &agora_store::RunRecord)> =
        runs.iter().map(|record| (final_metric(record, &metric), record)).collect();
    ranked.sort_by(|(left, _), (right, _)| match (left, right) {
        (Some(left), Some(right)) => match goal {
            Goal::Minimize => left.total_cmp(right),
            Goal::Maximize => right.total_cmp(left),
        },
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    if settings.json {
        let rows: Vec<Value> = ranked
            .iter()
            .enumerate()
            .map(|(rank, (value, record))| {
                json!({"rank": rank + 1, "run": record.id, "status": record.status, "metric": metric, "value": value})
            })
            .collect();
        return crate::output::print_json(&json!({"sweep": sweep_id, "metric": metric, "trials": rows}));
    }
    let direction = if goal == Goal::Minimize { "lower is better" } else { "higher is better" };
    println!("sweep {sweep_id}: {} runs ranked by {metric} ({direction})", ranked.len());
    println!("{:>4}  {:<34} {:<14} {:>12}  settings", "rank", "run", "status", metric);
    for (rank, (value, record)) in ranked.iter().enumerate() {
        let value = value.map_or("-".to_string(), |value| format!("{value:.5}"));
        println!(
            "{:>4}  {:<34} {:<14} {:>12}  {}",
            rank + 1,
            record.id,
            record.status,
            value,
            settings_of(record, sweep)
        );
    }
    Ok(())
}

/// The last value of `metric` a run logged (its summary keeps the last of each).
fn final_metric(record: &agora_store::RunRecord, metric: &str) -> Option<f64> {
    record.summary.as_ref()?.get("last_metrics")?.get(metric)?.as_f64()
}

/// The swept fields' values in a run's configuration.
fn settings_of(record: &agora_store::RunRecord, sweep: &agora_train::sweep::Sweep) -> String {
    sweep
        .parameters
        .iter()
        .map(|parameter| {
            let mut value = &record.config;
            for part in parameter.path.split('.') {
                value = value.get(part).unwrap_or(&Value::Null);
            }
            format!("{}={value}", parameter.path)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe(overrides: &[(String, Value)]) -> String {
    overrides.iter().map(|(path, value)| format!("{path}={value}")).collect::<Vec<_>>().join(" ")
}

fn relative_to(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    file.parent().map_or_else(|| path.to_path_buf(), |dir| dir.join(path))
}

fn new_sweep_id(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".to_string());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let stamp = agora_core::time::format_utc(now.as_secs() as i64).replace(['-', ':'], "");
    format!("{stem}-{stamp}-{:04x}", (now.subsec_nanos() ^ std::process::id()) & 0xffff)
}
