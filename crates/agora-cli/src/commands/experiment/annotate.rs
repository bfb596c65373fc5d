//! `agora annotate`: every annotator persona labels every comment of the experiment's
//! discussions (or of any store corpus), one unit per comment per annotator. Labels go to
//! the job ledger as they arrive and, once complete, to the store's annotations.

use agora_core::Conversation;
use agora_sim::annotation::{AnnotationPlan, AnnotationRecord, plan_annotations, read_annotation};
use agora_sim::discussion::corpus_name;
use agora_store::{JobStatus, Store};
use serde_json::json;

use super::{Stage, StageContext, StageOutcome, inputs, job_id, run_recorded, stored_units};

pub fn annotation_plan(context: &StageContext<'_>) -> anyhow::Result<(AnnotationPlan, String)> {
    let experiment = context.experiment();
    let Some(spec) = &experiment.annotation else {
        anyhow::bail!("the experiment has no [annotation] section");
    };
    let plan = AnnotationPlan {
        annotators: inputs::annotators(context.loaded, spec)?,
        scale: spec.scale.clone(),
        parser: spec.parser.clone(),
        context_window: spec.context_window,
        include_moderator: spec.include_moderator,
        context: spec.context.clone(),
        layout: spec.layout.clone(),
        sampling: experiment.stage_sampling(&spec.sampling),
        seed: experiment.seed,
    };
    let corpus = spec.corpus.clone().unwrap_or_else(|| corpus_name(&experiment.name));
    Ok((plan, corpus))
}

/// Every conversation of `corpus`, in store order; an empty or missing corpus is an error
/// naming it (annotating nothing is never what was meant).
pub fn corpus_conversations(store: &Store, corpus: &str) -> anyhow::Result<Vec<Conversation>> {
    let mut conversations = Vec::new();
    store.for_each_conversation(corpus, |conversation| {
        conversations.push(conversation);
        Ok::<(), agora_store::StoreError>(())
    })?;
    if conversations.is_empty() {
        anyhow::bail!("corpus `{corpus}` has no conversations (run the discussions first, or import it)");
    }
    Ok(conversations)
}

pub fn run(
    context: &mut StageContext<'_>,
    store: &mut Store,
    done_before: usize,
) -> anyhow::Result<StageOutcome> {
    let experiment = context.experiment().clone();
    let job = job_id(&experiment.name, Stage::Annotate);
    let (plan, corpus) = annotation_plan(context)?;
    let backend_spec = context.spec.to_string();
    store.ensure_job(&job, "annotate", &json!({"corpus": corpus, "backend": backend_spec, "plan": plan}))?;

    let mut items = Vec::new();
    for conversation in corpus_conversations(store, &corpus)? {
        items.extend(plan_annotations(&conversation, &plan)?);
    }
    let total = items.len();
    let skipped = store.done_units(&job)?.len();
    let done = run_recorded(context, store, &job, "labels", items, done_before, |item, reply| StoredLabel {
        record: read_annotation(&plan, item, &reply),
        backend: backend_spec.clone(),
    })?;
    let labels: Vec<(String, StoredLabel)> = stored_units(store, &job)?;
    let complete = labels.len() >= total;
    let unparsed = labels.iter().filter(|(_, label)| label.record.annotation.score.is_unparsed()).count();
    if complete {
        let annotations: Vec<_> = labels.into_iter().map(|(_, label)| label.record.annotation).collect();
        store.put_annotations(&job, &annotations)?;
        store.set_job_status(&job, JobStatus::Done)?;
    }
    Ok(StageOutcome {
        done,
        skipped,
        total,
        complete,
        notes: vec![("unparsed labels (kept raw)".into(), unparsed)],
    })
}

/// A stored label, with the backend that produced it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredLabel {
    #[serde(flatten)]
    pub record: AnnotationRecord,
    pub backend: String,
}
