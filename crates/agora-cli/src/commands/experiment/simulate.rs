//! `agora simulate` and `agora experiment plan`: discussions planned from the experiment
//! file, run side by side, each turn recorded the moment it is generated, and each
//! finished discussion written to the store as a conversation of corpus
//! `sim-<experiment>` (so `agora show`, `export` and annotation read it like any corpus).

use std::collections::BTreeMap;
use std::path::Path;

use agora_sim::discussion::{Discussion, DiscussionPlan, SimTurn, corpus_name};
use agora_sim::experiment::Experiment;
use agora_sim::plan::plan_discussions;
use agora_sim::runner::run_discussions;
use agora_store::{JobStatus, Store};
use anyhow::Context;
use serde_json::json;

use super::{LoadedExperiment, Stage, StageContext, StageOutcome, inputs, job_id, record, stored_units};
use crate::settings::Settings;

pub fn plans(loaded: &LoadedExperiment) -> anyhow::Result<Vec<DiscussionPlan>> {
    let experiment = &loaded.experiment;
    let Some(spec) = &experiment.discussions else {
        anyhow::bail!("{}: the experiment has no [discussions] section", loaded.file.display());
    };
    let inputs = inputs::discussion_inputs(loaded, spec)?;
    let sampling = experiment.stage_sampling(&spec.sampling);
    plan_discussions(spec, &inputs, experiment.seed, &sampling)
        .with_context(|| loaded.file.display().to_string())
}

pub fn plan(settings: &Settings, file: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let loaded = LoadedExperiment::load(file)?;
    let plans = plans(&loaded)?;
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        for plan in &plans {
            let path = out.join(format!("{}.json", plan.id));
            let text = serde_json::to_string_pretty(plan)?;
            std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if settings.json {
        return crate::output::print_json(&plans);
    }
    for plan in &plans {
        let users: Vec<&str> = plan.users.iter().map(|agent| agent.name.as_str()).collect();
        let instructions = plan.users.first().map_or("", |agent| agent.instructions_name.as_str());
        let moderator = plan.moderator.as_ref().map_or("no moderator".to_string(), |agent| {
            format!("moderator {} ({})", agent.name, agent.instructions_name)
        });
        println!(
            "{}  topic {}  users {} ({})  {}  {} turns, window {}, seed {:#018x}",
            plan.id,
            plan.topic_name,
            users.join(", "),
            if instructions.is_empty() { "no instructions" } else { instructions },
            moderator,
            plan.turns,
            plan.context_window,
            plan.seed
        );
    }
    match out {
        Some(out) => println!("{} discussion plans written to {}", plans.len(), out.display()),
        None => println!("{} discussion plans", plans.len()),
    }
    Ok(())
}

/// The job's stored configuration: what makes two runs the same experiment.
fn job_config(experiment: &Experiment, plans: &[DiscussionPlan], backend: &str) -> serde_json::Value {
    json!({"experiment": experiment.name, "backend": backend, "plans": plans})
}

/// A stored turn, with the backend that produced it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTurn {
    #[serde(flatten)]
    turn: SimTurn,
    backend: String,
}

pub fn run(
    context: &mut StageContext<'_>,
    store: &mut Store,
    done_before: usize,
) -> anyhow::Result<StageOutcome> {
    let experiment = context.experiment().clone();
    let job = job_id(&experiment.name, Stage::Simulate);
    let plans = plans(context.loaded)?;
    let backend_spec = context.spec.to_string();
    store.ensure_job(&job, "simulate", &job_config(&experiment, &plans, &backend_spec))?;

    let mut stored: BTreeMap<String, Vec<SimTurn>> = BTreeMap::new();
    for (key, unit) in stored_units::<StoredTurn>(store, &job)? {
        let discussion = key.split('/').next().unwrap_or_default().to_string();
        stored.entry(discussion).or_default().push(unit.turn);
    }
    let skipped: usize = stored.values().map(Vec::len).sum();
    let mut discussions = Vec::with_capacity(plans.len());
    for plan in plans {
        let done = stored.remove(&plan.id).unwrap_or_default();
        discussions.push(Discussion::resume(plan, done)?);
    }
    let corpus = corpus_name(&experiment.name);
    let (finished, running): (Vec<Discussion>, Vec<Discussion>) =
        discussions.into_iter().partition(Discussion::is_finished);
    for discussion in &finished {
        save_conversation(store, &experiment.name, discussion)?;
    }
    let expected_turns: usize = finished.iter().map(|d| d.turns().len()).sum::<usize>()
        + running.iter().map(|d| d.plan().turns as usize).sum::<usize>();

    let budget = context.budget(done_before);
    let progress = crate::output::counter("turns");
    let mut done = 0usize;
    let mut stopped_early = false;
    let result = if running.is_empty() {
        Ok(Vec::new())
    } else {
        let backend = context.backend()?;
        let concurrency = context.concurrency;
        let store_ref = &*store;
        let job_ref = &job;
        let experiment_name = &experiment.name;
        let backend_spec = &backend_spec;
        let progress_ref = &progress;
        let done_ref = &mut done;
        let stopped_ref = &mut stopped_early;
        context.block_on(run_discussions(backend.as_ref(), running, concurrency, move |discussion, turn| {
            if budget.is_some_and(|budget| *done_ref >= budget) {
                // Over --max-units: this turn is dropped unrecorded, and the run stops.
                *stopped_ref = true;
                return Err(agora_sim::SimError::Record {
                    unit: turn_unit(discussion, turn),
                    message: "--max-units reached".into(),
                });
            }
            let unit = StoredTurn { turn: turn.clone(), backend: backend_spec.clone() };
            record(store_ref, job_ref, &turn_unit(discussion, turn), &unit).map_err(|error| {
                agora_sim::SimError::Record {
                    unit: turn_unit(discussion, turn),
                    message: format!("{error:#}"),
                }
            })?;
            *done_ref += 1;
            progress_ref.inc(1);
            if discussion.is_finished() {
                save_conversation(store_ref, experiment_name, discussion).map_err(|error| {
                    agora_sim::SimError::Record {
                        unit: discussion.plan().id.clone(),
                        message: format!("{error:#}"),
                    }
                })?;
            }
            Ok(())
        }))
    };
    progress.finish_and_clear();
    let complete = match result {
        Ok(_) => true,
        Err(_) if stopped_early => false,
        Err(error) => {
            store.set_job_status(&job, JobStatus::Failed)?;
            return Err(error.into());
        }
    };
    // Everything recorded, counted from the store (the truth after any interruption).
    let all: Vec<(String, StoredTurn)> = stored_units(store, &job)?;
    let empty = all.iter().filter(|(_, unit)| unit.turn.is_empty()).count();
    if complete {
        store.set_job_status(&job, JobStatus::Done)?;
    }
    Ok(StageOutcome {
        done,
        skipped,
        // Moderator turns depend on what users say, so the total is known at the end.
        total: if complete { all.len() } else { expected_turns.max(all.len()) },
        complete,
        notes: vec![
            ("empty replies".into(), empty),
            (format!("discussions in corpus {corpus}"), store.conversation_ids(&corpus)?.len()),
        ],
    })
}

fn turn_unit(discussion: &Discussion, turn: &SimTurn) -> String {
    agora_sim::discussion::turn_key(&discussion.plan().id, turn.index)
}

/// Writes a finished discussion to the store (idempotent: an unchanged one is left alone).
fn save_conversation(store: &Store, experiment: &str, discussion: &Discussion) -> anyhow::Result<()> {
    let conversation = discussion.to_conversation(experiment);
    let mut batch = store.begin_import(&corpus_name(experiment), "sim")?;
    batch.add(&conversation)?;
    batch.finish(
        &format!("experiment {experiment}"),
        &json!({"discussions": 1, "turns": conversation.turns.len()}),
    )?;
    Ok(())
}
