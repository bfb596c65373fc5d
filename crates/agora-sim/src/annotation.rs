//! LLM annotators: each annotator persona labels every comment of a conversation (one
//! label per comment per annotator), seeing the comments before it in a context window,
//! as the framework's annotation jobs did. A reply that does not parse is kept raw and
//! counted, never dropped.

use agora_core::{Annotation, Conversation, Role, Score};
use agora_llm::{Reply, Request, Sampling};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::parse::ScoreParser;
use crate::prompt::{Agent, AnnotationLayout, Line, prompt_hash};
use crate::runner::{WorkItem, unit_seed};

/// An annotation job over conversations, fully decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationPlan {
    pub annotators: Vec<Agent>,
    /// What is measured, e.g. `toxicity`.
    pub scale: String,
    pub parser: ScoreParser,
    /// How many comments before the labelled one the annotator sees.
    pub context_window: usize,
    /// Whether moderator comments are labelled too (they are always visible as context).
    pub include_moderator: bool,
    pub context: String,
    pub layout: AnnotationLayout,
    pub sampling: Sampling,
    pub seed: u64,
}

/// What a stored annotation unit holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub annotation: Annotation,
    pub raw: String,
    pub finish_reason: String,
    pub prompt_hash: String,
    pub seed: u64,
}

/// Which comment and annotator a work item is about.
#[derive(Debug, Clone)]
pub struct AnnotationTarget {
    pub conversation_id: String,
    pub turn_index: u32,
    pub annotator: String,
}

pub fn annotation_key(conversation_id: &str, turn_index: u32, annotator: &str) -> String {
    format!("{conversation_id}/t{turn_index:04}/{annotator}")
}

/// The work items of one conversation: every non-empty comment (moderator comments only
/// when `include_moderator`) times every annotator.
pub fn plan_annotations(
    conversation: &Conversation,
    plan: &AnnotationPlan,
) -> Result<Vec<WorkItem<AnnotationTarget>>> {
    let spoken: Vec<_> = conversation.turns.iter().filter(|turn| !turn.text.trim().is_empty()).collect();
    let mut items = Vec::new();
    for (position, turn) in spoken.iter().enumerate() {
        if turn.role == Role::Moderator && !plan.include_moderator {
            continue;
        }
        let start = position.saturating_sub(plan.context_window);
        let visible: Vec<Line<'_>> = spoken[start..=position]
            .iter()
            .map(|turn| Line { speaker: &turn.speaker, text: &turn.text })
            .collect();
        for annotator in &plan.annotators {
            let key = annotation_key(&conversation.id, turn.index, &annotator.name);
            let messages = plan.layout.render(annotator, &plan.context, &visible)?;
            let seed = unit_seed(plan.seed, &key);
            let hash = prompt_hash(&messages);
            items.push(WorkItem {
                key,
                request: Request::chat(messages, Sampling { seed: Some(seed), ..plan.sampling.clone() }),
                prompt_hash: hash,
                meta: AnnotationTarget {
                    conversation_id: conversation.id.clone(),
                    turn_index: turn.index,
                    annotator: annotator.name.clone(),
                },
            });
        }
    }
    Ok(items)
}

/// Reads an annotator's reply into the stored record.
pub fn read_annotation(
    plan: &AnnotationPlan,
    item: &WorkItem<AnnotationTarget>,
    reply: &Reply,
) -> AnnotationRecord {
    let score: Score = plan.parser.parse(&reply.text);
    AnnotationRecord {
        annotation: Annotation {
            conversation_id: item.meta.conversation_id.clone(),
            turn_index: item.meta.turn_index,
            annotator: item.meta.annotator.clone(),
            model: Some(reply.model.clone()),
            scale: plan.scale.clone(),
            score,
        },
        raw: reply.text.clone(),
        finish_reason: reply.finish_reason.as_str().to_string(),
        prompt_hash: item.prompt_hash.clone(),
        seed: item.request.sampling.seed.unwrap_or_default(),
    }
}
