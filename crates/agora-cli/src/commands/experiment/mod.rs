//! `agora experiment plan|run|export`, `agora simulate|continue|annotate|judge` and
//! `agora report`: an experiment file read once, its inputs read from files next to it,
//! then each stage run against one backend with every finished unit written to the
//! store's job ledger as it completes — so a stopped run (Ctrl-C, kill -9, a crash)
//! started again continues where it stopped, with nothing lost and nothing twice.
//!
//! Jobs are named `<experiment>/<stage>`; their stored configuration is the resolved stage
//! (plans, personas, prompts, sampling, backend spec), so resuming with a changed file or
//! another backend is refused instead of mixing two experiments.

mod annotate;
mod continuation;
mod export;
mod inputs;
mod judge;
pub mod report;
mod simulate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_llm::{Backend, BackendSpec};
use agora_sim::experiment::Experiment;
use agora_store::Store;
use anyhow::{Context, bail};

use crate::args::{ExperimentCommand, StageArgs};
use crate::settings::Settings;

/// The stages, in the order `experiment run` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Simulate,
    Continue,
    Annotate,
    Judge,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Simulate => "simulate",
            Stage::Continue => "continue",
            Stage::Annotate => "annotate",
            Stage::Judge => "judge",
        }
    }
}

/// The ledger job of an experiment's stage.
pub fn job_id(experiment: &str, stage: Stage) -> String {
    format!("{experiment}/{}", stage.name())
}

pub fn run(settings: &Settings, command: ExperimentCommand) -> anyhow::Result<()> {
    match command {
        ExperimentCommand::Plan { file, out } => simulate::plan(settings, &file, out.as_deref()),
        ExperimentCommand::Run(args) => {
            run_stages(settings, &args, &[Stage::Simulate, Stage::Continue, Stage::Annotate, Stage::Judge])
        }
        ExperimentCommand::Export(args) => export::run(settings, &args),
    }
}

/// An experiment file, read and checked, with the folder its paths are relative to.
pub struct LoadedExperiment {
    pub experiment: Experiment,
    /// The file's text as read (kept with every run).
    pub text: String,
    pub folder: PathBuf,
    pub file: PathBuf,
}

impl LoadedExperiment {
    pub fn load(file: &Path) -> anyhow::Result<LoadedExperiment> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read experiment file {}", file.display()))?;
        let experiment = Experiment::from_toml(&text, &file.display().to_string())?;
        let folder = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(LoadedExperiment { experiment, text, folder, file: file.to_path_buf() })
    }

    /// A path of the file, resolved against the file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.folder.join(path) }
    }
}

/// What every stage runs with.
pub struct StageContext<'a> {
    pub loaded: &'a LoadedExperiment,
    pub spec: BackendSpec,
    pub concurrency: usize,
    pub max_units: Option<usize>,
    backend: Option<Arc<dyn Backend>>,
    model: &'a crate::args::ModelArgs,
    runtime: tokio::runtime::Runtime,
}

impl StageContext<'_> {
    pub fn experiment(&self) -> &Experiment {
        &self.loaded.experiment
    }

    /// The backend, opened on first use (a stage with nothing left to do loads no model).
    pub fn backend(&mut self) -> anyhow::Result<Arc<dyn Backend>> {
        if let Some(backend) = &self.backend {
            return Ok(backend.clone());
        }
        let backend = super::backend::open_backend_with(&self.spec, self.model, Some(self.concurrency))?;
        self.backend = Some(backend.clone());
        Ok(backend)
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Units a stage may still run under `--max-units`, given `done` so far this run.
    pub fn budget(&self, done_this_run: usize) -> Option<usize> {
        self.max_units.map(|max| max.saturating_sub(done_this_run))
    }
}

pub fn run_stages(settings: &Settings, args: &StageArgs, stages: &[Stage]) -> anyhow::Result<()> {
    let loaded = LoadedExperiment::load(&args.file)?;
    let experiment = &loaded.experiment;
    let spec_text =
        args.backend.clone().or_else(|| experiment.backend.clone()).unwrap_or_else(|| "native".into());
    let spec: BackendSpec = spec_text.parse().with_context(|| format!("backend `{spec_text}`"))?;
    let concurrency = args
        .concurrency
        .or(experiment.concurrency)
        .unwrap_or(if matches!(spec, BackendSpec::Native(_)) { 1 } else { 8 });
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut context = StageContext {
        loaded: &loaded,
        spec,
        concurrency,
        max_units: args.max_units,
        backend: None,
        model: &args.model,
        runtime,
    };
    let mut store = settings.open_or_create_store()?;
    record_experiment_file(&store, &loaded)?;
    let mut ran_any = false;
    let mut done_this_run = 0;
    for &stage in stages {
        let present = match stage {
            Stage::Simulate => experiment.discussions.is_some(),
            Stage::Continue => experiment.continuation.is_some(),
            Stage::Annotate => experiment.annotation.is_some(),
            Stage::Judge => experiment.judge.is_some(),
        };
        if !present {
            if stages.len() == 1 {
                bail!(
                    "{}: the experiment has no [{}] section",
                    args.file.display(),
                    match stage {
                        Stage::Simulate => "discussions",
                        Stage::Continue => "continuation",
                        Stage::Annotate => "annotation",
                        Stage::Judge => "judge",
                    }
                );
            }
            continue;
        }
        ran_any = true;
        if context.budget(done_this_run) == Some(0) {
            eprintln!("{}: stopped before this stage (--max-units reached)", job_id(&experiment.name, stage));
            break;
        }
        let outcome = match stage {
            Stage::Simulate => simulate::run(&mut context, &mut store, done_this_run),
            Stage::Continue => continuation::run(&mut context, &mut store, done_this_run),
            Stage::Annotate => annotate::run(&mut context, &mut store, done_this_run),
            Stage::Judge => judge::run(&mut context, &mut store, done_this_run),
        }
        .with_context(|| job_id(&experiment.name, stage))?;
        done_this_run += outcome.done;
        print_outcome(settings, &experiment.name, stage, &outcome)?;
        if !outcome.complete {
            break;
        }
    }
    if !ran_any {
        bail!("{}: nothing to run", args.file.display());
    }
    if !settings.json {
        println!(
            "results in {} — `agora report {}` summarises them, `agora experiment export {} --out DIR` exports them",
            settings.store_path().display(),
            experiment.name,
            experiment.name
        );
    }
    Ok(())
}

/// Keeps every version of the experiment file a run used, as written and as resolved, in
/// job `<name>/experiment` under the hash of its text (so the file can be changed and each
/// result still traced to the file that made it).
fn record_experiment_file(store: &Store, loaded: &LoadedExperiment) -> anyhow::Result<()> {
    let job = format!("{}/experiment", loaded.experiment.name);
    store.ensure_job(&job, "experiment", &serde_json::json!({}))?;
    let hash = agora_sim::prompt::text_hash(&loaded.text);
    let value = serde_json::json!({
        "file": loaded.file.display().to_string(),
        "text": loaded.text,
        "resolved": loaded.experiment,
    });
    store.record_unit(&job, &hash, &value)?;
    Ok(())
}

/// How a stage went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageOutcome {
    /// Units recorded by this run.
    pub done: usize,
    /// Units found already recorded and skipped.
    pub skipped: usize,
    /// Units the stage has in all.
    pub total: usize,
    /// Whether every unit is now recorded (false after `--max-units`).
    pub complete: bool,
    /// Stage-specific counts (empty replies, unparsed labels...).
    pub notes: Vec<(String, usize)>,
}

fn print_outcome(
    settings: &Settings,
    experiment: &str,
    stage: Stage,
    outcome: &StageOutcome,
) -> anyhow::Result<()> {
    let job = job_id(experiment, stage);
    if settings.json {
        let mut value = serde_json::to_value(outcome)?;
        value["job"] = serde_json::json!(job);
        return crate::output::print_json(&value);
    }
    let notes: Vec<String> = outcome.notes.iter().map(|(what, count)| format!("{count} {what}")).collect();
    println!(
        "{job}: {} new, {} already done, {} of {} recorded{}{}",
        outcome.done,
        outcome.skipped,
        outcome.done + outcome.skipped,
        outcome.total,
        if outcome.complete { "" } else { " (incomplete: run it again to resume)" },
        if notes.is_empty() { String::new() } else { format!("; {}", notes.join(", ")) }
    );
    Ok(())
}

/// Records a unit, and says so when it was already there (which a correct run never
/// does: the runner skips recorded units).
pub fn record(store: &Store, job: &str, key: &str, result: &impl serde::Serialize) -> anyhow::Result<()> {
    let value = serde_json::to_value(result)?;
    if !store.record_unit(job, key, &value)? {
        eprintln!("warning: {job}: unit {key} was already recorded; the new result was not stored");
    }
    Ok(())
}

/// Parses every stored unit of `job` as `T`, naming the unit that does not parse.
pub fn stored_units<T: serde::de::DeserializeOwned>(
    store: &Store,
    job: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    store
        .units(job)?
        .into_iter()
        .map(|unit| {
            let value = serde_json::from_value(unit.result)
                .with_context(|| format!("{job}: stored unit {} does not parse", unit.key))?;
            Ok((unit.key, value))
        })
        .collect()
}

/// Keeps the recorded items and at most `budget` new ones (`--max-units`).
pub fn limit_new<M>(
    items: &mut Vec<agora_sim::runner::WorkItem<M>>,
    done: &std::collections::HashSet<String>,
    budget: Option<usize>,
) {
    if let Some(mut allowed) = budget {
        items.retain(|item| {
            if done.contains(&item.key) {
                return true;
            }
            if allowed == 0 {
                return false;
            }
            allowed -= 1;
            true
        });
    }
}

/// Runs a stage's independent units (labels, scores, continuations): the ones already
/// recorded are skipped, at most `--max-units` new ones run, each reply is recorded the
/// moment it arrives as `stored` makes it, and a failure marks the job failed. Returns the
/// units recorded by this run.
pub fn run_recorded<M, T: serde::Serialize>(
    context: &mut StageContext<'_>,
    store: &Store,
    job: &str,
    what: &'static str,
    mut items: Vec<agora_sim::runner::WorkItem<M>>,
    done_before: usize,
    stored: impl Fn(&agora_sim::runner::WorkItem<M>, agora_llm::Reply) -> T,
) -> anyhow::Result<usize> {
    let done_keys = store.done_units(job)?;
    limit_new(&mut items, &done_keys, context.budget(done_before));
    if items.iter().all(|item| done_keys.contains(&item.key)) {
        return Ok(0);
    }
    let backend = context.backend()?;
    let progress = crate::output::counter(what);
    let result = context.block_on(agora_sim::runner::run_units(
        backend.as_ref(),
        items,
        context.concurrency,
        |key| done_keys.contains(key),
        |item, reply| {
            record(store, job, &item.key, &stored(item, reply)).map_err(|error| {
                agora_sim::SimError::Record { unit: item.key.clone(), message: format!("{error:#}") }
            })?;
            progress.inc(1);
            Ok(())
        },
    ));
    progress.finish_and_clear();
    match result {
        Ok(stats) => Ok(stats.done),
        Err(error) => {
            store.set_job_status(job, agora_store::JobStatus::Failed)?;
            Err(error.into())
        }
    }
}
