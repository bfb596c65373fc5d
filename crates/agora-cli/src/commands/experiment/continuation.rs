//! `agora continue`: each conversation of a corpus (an imported ESConv, or any other) cut
//! at the chosen turns and continued once per strategy of a strategy set, in the "full" or
//! "partial" history layout of ESConv-SRA. One unit per (conversation, cut, strategy).

use agora_llm::{Request, Sampling};
use agora_sim::continuation::{clean_reply, plan_continuations};
use agora_sim::prompt::prompt_hash;
use agora_sim::runner::{WorkItem, unit_seed};
use agora_store::{JobStatus, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::annotate::corpus_conversations;
use super::{Stage, StageContext, StageOutcome, job_id, run_recorded, stored_units};

/// A stored continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredContinuation {
    pub conversation_id: String,
    pub cut_turn: u32,
    pub strategy: String,
    /// The reply, cleaned (a leading "assistant:" removed, trimmed).
    pub text: String,
    pub raw: String,
    pub model: String,
    pub backend: String,
    pub finish_reason: String,
    pub prompt_hash: String,
    pub seed: u64,
}

#[derive(Debug, Clone)]
struct Target {
    conversation_id: String,
    cut_turn: u32,
    strategy: String,
}

pub fn run(
    context: &mut StageContext<'_>,
    store: &mut Store,
    done_before: usize,
) -> anyhow::Result<StageOutcome> {
    let experiment = context.experiment().clone();
    let Some(spec) = &experiment.continuation else {
        anyhow::bail!("the experiment has no [continuation] section");
    };
    let job = job_id(&experiment.name, Stage::Continue);
    let strategies = spec.strategies.strategies();
    let sampling = experiment.stage_sampling(&spec.sampling);
    let backend_spec = context.spec.to_string();
    store.ensure_job(
        &job,
        "continue",
        &json!({"corpus": spec.corpus, "backend": backend_spec, "spec": spec, "sampling": sampling, "seed": experiment.seed}),
    )?;
    let mut conversations = corpus_conversations(store, &spec.corpus)?;
    if let Some(limit) = spec.limit {
        conversations.truncate(limit);
    }
    let mut items = Vec::new();
    for conversation in &conversations {
        let situation = conversation.meta.get("situation").and_then(serde_json::Value::as_str);
        for planned in plan_continuations(conversation, situation, &spec.cuts, &strategies, spec.layout) {
            let seed = unit_seed(experiment.seed, &planned.key);
            items.push(WorkItem {
                prompt_hash: prompt_hash(&planned.messages),
                request: Request::chat(planned.messages, Sampling { seed: Some(seed), ..sampling.clone() }),
                key: planned.key,
                meta: Target {
                    conversation_id: planned.conversation_id,
                    cut_turn: planned.cut_turn,
                    strategy: planned.strategy,
                },
            });
        }
    }
    let total = items.len();
    if total == 0 {
        anyhow::bail!("corpus `{}`: no conversation has a turn to continue under these cuts", spec.corpus);
    }
    let skipped = store.done_units(&job)?.len();
    let done = run_recorded(context, store, &job, "continuations", items, done_before, |item, reply| {
        StoredContinuation {
            conversation_id: item.meta.conversation_id.clone(),
            cut_turn: item.meta.cut_turn,
            strategy: item.meta.strategy.clone(),
            text: clean_reply(&reply.text),
            raw: reply.text.clone(),
            model: reply.model.clone(),
            backend: backend_spec.clone(),
            finish_reason: reply.finish_reason.as_str().to_string(),
            prompt_hash: item.prompt_hash.clone(),
            seed: item.request.sampling.seed.unwrap_or_default(),
        }
    })?;
    let stored: Vec<(String, StoredContinuation)> = stored_units(store, &job)?;
    let complete = stored.len() >= total;
    if complete {
        store.set_job_status(&job, JobStatus::Done)?;
    }
    let empty = stored.iter().filter(|(_, unit)| unit.text.is_empty()).count();
    Ok(StageOutcome {
        done,
        skipped,
        total,
        complete,
        notes: vec![("empty replies".into(), empty), ("strategies".into(), strategies.len())],
    })
}
