//! `agora judge`: an LLM judge scores the experiment's replies under a rubric — comments
//! of its discussions (or any corpus), its continuations one by one, or pairs of its
//! continuations (each strategy against a baseline) — repeated and position-swapped as the
//! file asks. One unit per judge call; unparsed replies are stored raw and counted.

use std::collections::BTreeMap;

use agora_sim::discussion::corpus_name;
use agora_sim::experiment::JudgeTarget;
use agora_sim::judging::{JudgePlan, JudgeRecord, judge_work, read_judgement, turn_items};
use agora_sim::rubric::JudgeItem;
use agora_store::{JobStatus, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::annotate::corpus_conversations;
use super::continuation::StoredContinuation;
use super::{Stage, StageContext, StageOutcome, job_id, run_recorded, stored_units};

/// A stored judge reply, with the backend that produced it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredScore {
    #[serde(flatten)]
    pub record: JudgeRecord,
    pub backend: String,
}

impl std::ops::Deref for StoredScore {
    type Target = JudgeRecord;
    fn deref(&self) -> &JudgeRecord {
        &self.record
    }
}

/// The items a judge target names, keyed.
fn items(
    context: &StageContext<'_>,
    store: &Store,
    target: &JudgeTarget,
    window: usize,
) -> anyhow::Result<Vec<(String, JudgeItem)>> {
    let experiment = context.experiment();
    match target {
        JudgeTarget::Turns { corpus, roles } => {
            let corpus = corpus.clone().unwrap_or_else(|| corpus_name(&experiment.name));
            let mut items = Vec::new();
            for conversation in corpus_conversations(store, &corpus)? {
                items.extend(turn_items(&conversation, roles, window));
            }
            Ok(items)
        }
        JudgeTarget::Continuations | JudgeTarget::ContinuationPairs { .. } => {
            let Some(spec) = &experiment.continuation else {
                anyhow::bail!("judge.target: continuations need a [continuation] section");
            };
            let continuations: Vec<(String, StoredContinuation)> =
                stored_units(store, &job_id(&experiment.name, Stage::Continue))?;
            if continuations.is_empty() {
                anyhow::bail!("judge.target: no continuations recorded yet (run `agora continue` first)");
            }
            let strategies = spec.strategies.clone();
            let describe = |name: &str| match strategies.find(name) {
                Some(strategy) => format!("{}: {}", strategy.name, strategy.description),
                None => name.to_string(),
            };
            // The history each continuation answered, from the corpus.
            let mut contexts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for conversation in corpus_conversations(store, &spec.corpus)? {
                let turns =
                    conversation.turns.iter().map(|turn| (turn.speaker.clone(), turn.text.clone())).collect();
                contexts.insert(conversation.id.clone(), turns);
            }
            let history = |unit: &StoredContinuation| -> Vec<(String, String)> {
                let turns = contexts.get(&unit.conversation_id).cloned().unwrap_or_default();
                let cut = (unit.cut_turn as usize).min(turns.len());
                turns[cut.saturating_sub(window)..cut].to_vec()
            };
            match target {
                JudgeTarget::ContinuationPairs { baseline } => {
                    let mut by_cut: BTreeMap<(String, u32), BTreeMap<String, &StoredContinuation>> =
                        BTreeMap::new();
                    for (_, unit) in &continuations {
                        by_cut
                            .entry((unit.conversation_id.clone(), unit.cut_turn))
                            .or_default()
                            .insert(unit.strategy.clone(), unit);
                    }
                    let mut items = Vec::new();
                    for ((conversation, cut), units) in &by_cut {
                        let Some(base) = units.get(baseline) else { continue };
                        for (strategy, unit) in units {
                            if strategy == baseline {
                                continue;
                            }
                            items.push((
                                format!("{conversation}/{cut}/{strategy}~{baseline}"),
                                JudgeItem::Pair {
                                    context: history(unit),
                                    strategy: Some(describe(strategy)),
                                    a: unit.text.clone(),
                                    b: base.text.clone(),
                                },
                            ));
                        }
                    }
                    if items.is_empty() {
                        anyhow::bail!(
                            "judge.target: no cut has a continuation with the baseline strategy `{baseline}`"
                        );
                    }
                    Ok(items)
                }
                _ => Ok(continuations
                    .iter()
                    .map(|(key, unit)| {
                        (
                            key.clone(),
                            JudgeItem::Single {
                                context: history(unit),
                                reply: unit.text.clone(),
                                strategy: Some(describe(&unit.strategy)),
                            },
                        )
                    })
                    .collect()),
            }
        }
    }
}

pub fn run(
    context: &mut StageContext<'_>,
    store: &mut Store,
    done_before: usize,
) -> anyhow::Result<StageOutcome> {
    let experiment = context.experiment().clone();
    let Some(spec) = &experiment.judge else {
        anyhow::bail!("the experiment has no [judge] section");
    };
    let job = job_id(&experiment.name, Stage::Judge);
    let rubric = spec.rubric.resolve().map_err(|error| anyhow::anyhow!("judge.rubric: {error}"))?;
    let plan = JudgePlan {
        rubric,
        repeats: spec.repeats,
        swap: spec.swap,
        sampling: experiment.stage_sampling(&spec.sampling),
        seed: experiment.seed,
    };
    let backend_spec = context.spec.to_string();
    store.ensure_job(&job, "judge", &json!({"backend": backend_spec, "plan": plan, "target": spec.target, "context_window": spec.context_window}))?;
    let mut work = Vec::new();
    for (key, item) in items(context, store, &spec.target, spec.context_window)? {
        work.extend(judge_work(&plan, &key, &item)?);
    }
    let total = work.len();
    let skipped = store.done_units(&job)?.len();
    let done = run_recorded(context, store, &job, "scores", work, done_before, |item, reply| StoredScore {
        record: read_judgement(&plan, item, &reply),
        backend: backend_spec.clone(),
    })?;
    let stored: Vec<(String, StoredScore)> = stored_units(store, &job)?;
    let complete = stored.len() >= total;
    if complete {
        store.set_job_status(&job, JobStatus::Done)?;
    }
    let unparsed =
        stored.iter().filter(|(_, score)| score.scores.iter().any(|(_, score)| score.is_unparsed())).count();
    Ok(StageOutcome {
        done,
        skipped,
        total,
        complete,
        notes: vec![("judge replies with an unparsed dimension (kept raw)".into(), unparsed)],
    })
}
