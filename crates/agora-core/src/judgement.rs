//! Annotations (a label per comment per annotator) and judgements (a rubric score per
//! reply). A reply that does not parse is kept as `Score::Unparsed` with its raw text,
//! never dropped: dropping them silently biased the origins' means.

use serde::{Deserialize, Serialize};

/// A parsed value, or the raw text of a reply that could not be parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Score {
    Value { value: f64 },
    Label { label: String },
    Unparsed { raw: String },
}

impl Score {
    pub fn value(&self) -> Option<f64> {
        match self {
            Score::Value { value } => Some(*value),
            _ => None,
        }
    }

    pub fn is_unparsed(&self) -> bool {
        matches!(self, Score::Unparsed { .. })
    }
}

/// One annotator's label for one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub conversation_id: String,
    pub turn_index: u32,
    /// Annotator persona name.
    pub annotator: String,
    /// The model that played the annotator, when a model did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What is measured, e.g. `toxicity`.
    pub scale: String,
    pub score: Score,
}

/// One judge's score of one reply under one rubric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub conversation_id: String,
    pub turn_index: u32,
    pub rubric: String,
    /// e.g. `likert-1-7`, `pairwise`.
    pub scale: String,
    pub score: Score,
    pub judge_model: String,
    /// Hash of the exact prompt sent to the judge.
    pub prompt_hash: String,
}
