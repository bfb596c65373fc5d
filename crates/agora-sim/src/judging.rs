//! LLM judges over stored replies: which items are judged (comments of a conversation,
//! continuations, pairs of continuations), the work items (each repeat, and for pairwise
//! rubrics each order when swapping), and the stored record of a judge's reply — every
//! dimension's score, or the raw reply when it does not parse (counted, never dropped).

use agora_core::{Conversation, Role, Score};
use agora_llm::{Reply, Request, Sampling};
use serde::{Deserialize, Serialize};

use crate::prompt::prompt_hash;
use crate::rubric::{JudgeItem, Rubric, RubricKind, unswap_verdict};
use crate::runner::{WorkItem, unit_seed};
use crate::{Result, SimError};

/// A judging job, fully decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgePlan {
    pub rubric: Rubric,
    pub repeats: u32,
    /// Pairwise rubrics: also judge every pair with A and B exchanged.
    pub swap: bool,
    pub sampling: Sampling,
    pub seed: u64,
}

/// Which item, repeat and order a work item is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeMeta {
    pub item: String,
    pub repeat: u32,
    pub swapped: bool,
}

/// What a stored judge unit holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// The judged item (`<conversation>/t0003`, `<conversation>/<cut>/<strategy>`, or a
    /// pair `<...>/<strategy>~<baseline>`).
    pub item: String,
    pub repeat: u32,
    pub swapped: bool,
    pub rubric: String,
    /// One score per rubric dimension, in the rubric's order; verdicts of swapped
    /// prompts already mapped back to the original order.
    pub scores: Vec<(String, Score)>,
    pub raw: String,
    pub model: String,
    pub finish_reason: String,
    pub prompt_hash: String,
    pub seed: u64,
}

/// The comments of `conversation` by speakers of `roles`, each with up to `window`
/// comments before it (empty comments are neither judged nor shown).
pub fn turn_items(conversation: &Conversation, roles: &[Role], window: usize) -> Vec<(String, JudgeItem)> {
    let spoken: Vec<_> = conversation.turns.iter().filter(|turn| !turn.text.trim().is_empty()).collect();
    let mut items = Vec::new();
    for (position, turn) in spoken.iter().enumerate() {
        // The opening post (turn 0) starts the discussion: there is nothing it replies to.
        if position == 0 || !roles.contains(&turn.role) {
            continue;
        }
        let start = position.saturating_sub(window);
        let context =
            spoken[start..position].iter().map(|turn| (turn.speaker.clone(), turn.text.clone())).collect();
        items.push((
            format!("{}/t{:04}", conversation.id, turn.index),
            JudgeItem::Single { context, reply: turn.text.clone(), strategy: None },
        ));
    }
    items
}

/// The work items of one judged item: each repeat, and both orders of a pair when
/// swapping. Keys: `<item>/r<repeat>` and `<item>/r<repeat>/swapped`.
pub fn judge_work(plan: &JudgePlan, item_key: &str, item: &JudgeItem) -> Result<Vec<WorkItem<JudgeMeta>>> {
    let pairwise = matches!(item, JudgeItem::Pair { .. });
    if pairwise != (plan.rubric.kind == RubricKind::Pairwise) {
        return Err(SimError::config(
            format!("judge: {item_key}"),
            format!(
                "rubric `{}` judges {} but the target gives {}",
                plan.rubric.name,
                if plan.rubric.kind == RubricKind::Pairwise { "pairs" } else { "single replies" },
                if pairwise { "pairs" } else { "single replies" }
            ),
        ));
    }
    let orders: &[bool] = if pairwise && plan.swap { &[false, true] } else { &[false] };
    let mut work = Vec::new();
    for repeat in 0..plan.repeats {
        for &swapped in orders {
            let key = if swapped {
                format!("{item_key}/r{repeat}/swapped")
            } else {
                format!("{item_key}/r{repeat}")
            };
            let shown = if swapped { item.swapped() } else { item.clone() };
            let messages = plan
                .rubric
                .render(&shown)
                .map_err(|error| SimError::config(format!("judge: {item_key}"), error.to_string()))?;
            let seed = unit_seed(plan.seed, &key);
            let hash = prompt_hash(&messages);
            work.push(WorkItem {
                key,
                request: Request::chat(messages, Sampling { seed: Some(seed), ..plan.sampling.clone() }),
                prompt_hash: hash,
                meta: JudgeMeta { item: item_key.to_string(), repeat, swapped },
            });
        }
    }
    Ok(work)
}

/// Reads a judge's reply into the stored record.
pub fn read_judgement(plan: &JudgePlan, work: &WorkItem<JudgeMeta>, reply: &Reply) -> JudgeRecord {
    let scores = plan
        .rubric
        .parse(&reply.text)
        .into_iter()
        .map(|(dimension, score)| (dimension, if work.meta.swapped { unswap_verdict(score) } else { score }))
        .collect();
    JudgeRecord {
        item: work.meta.item.clone(),
        repeat: work.meta.repeat,
        swapped: work.meta.swapped,
        rubric: plan.rubric.name.clone(),
        scores,
        raw: reply.text.clone(),
        model: reply.model.clone(),
        finish_reason: reply.finish_reason.as_str().to_string(),
        prompt_hash: work.prompt_hash.clone(),
        seed: work.request.sampling.seed.unwrap_or_default(),
    }
}
