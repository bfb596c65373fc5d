//! Experiment files: one TOML file says which personas, topics and instructions take part,
//! which backend and sampling, the seed, and what to run — discussions, annotation,
//! judging, continuations. Every part is a closed serde type, so the resolved file is
//! stored with every run and a resumed run can check it is the same experiment.
//!
//! Paths are as written in the file; the command line resolves them against the file's
//! folder and reads them (this crate does no IO).

use std::path::PathBuf;

use agora_llm::Sampling;
use serde::{Deserialize, Deserializer, Serialize};

use crate::continuation::{CutSpec, HistoryLayout};
use crate::parse::ScoreParser;
use crate::policy::{ModeratorPolicy, TurnPolicy};
use crate::prompt::{AnnotationLayout, DiscussionLayout};
use crate::rubric::RubricSpec;
use crate::strategies::StrategySet;
use crate::{Result, SimError};

/// The framework's scene for discussion agents (its 2026 `context_prompt`).
pub const DEFAULT_CONTEXT: &str = "Pretend that you are a human participating in an online forum with the provided characteristics and respond as that human would.";

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the experiment's jobs and outputs in the store (letters, digits, `-`, `_`).
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// A backend spec (`native`, `native:PATH`, `openai:URL#MODEL`, `fake:seeded`); the
    /// command line's `--backend` wins. Default: the embedded model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Requests in flight at once. Default: 1 for the native backend (its replies are then
    /// identical run after run), 8 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Sampling for every stage, unless a stage sets its own.
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discussions: Option<DiscussionsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<AnnotationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<ContinuationSpec>,
}

fn default_seed() -> u64 {
    42
}

/// One path or several, in TOML as a string or an array of strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Paths(pub Vec<PathBuf>);

impl<'de> Deserialize<'de> for Paths {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Paths, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(path) => Paths(vec![path]),
            OneOrMany::Many(paths) => Paths(paths),
        })
    }
}

/// `[discussions]`: the modular inputs of the framework's config generator — persona files
/// x topics x user instructions x moderator instructions — and how discussions run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscussionsSpec {
    /// SDF persona JSON files or folders.
    pub personas: Paths,
    /// Topic `.txt` files or folders: each topic is an opening post.
    pub topics: Paths,
    /// User instruction `.txt` files or folders. Default: no instructions.
    #[serde(default)]
    pub user_instructions: Paths,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderator: Option<ModeratorSpec>,
    /// An SDF config (`other_configs/*.json` or the 2026 `run_config.yml`) supplying turns,
    /// context window, turn policy (and from the YAML, users per discussion and the
    /// context prompt). Fields set in this file win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_config: Option<PathBuf>,
    /// Personas per discussion, drawn without replacement (seeded). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<usize>,
    /// Number of discussions, each drawing a combination of topic and instructions
    /// (seeded). Default: every combination, `repeats` times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(default = "one")]
    pub repeats: usize,
    /// Turns chosen by the turn policy (default 8; the moderator's turns come on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    /// Latest comments each agent sees (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_policy: Option<TurnPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Who wrote the opening post (default `OP`).
    #[serde(default = "default_opening_speaker")]
    pub opening_speaker: String,
    #[serde(default)]
    pub layout: DiscussionLayout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

fn one() -> usize {
    1
}

fn default_opening_speaker() -> String {
    "OP".to_string()
}

/// `[discussions.moderator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeratorSpec {
    #[serde(default = "default_moderator_name")]
    pub name: String,
    /// An SDF persona file for the moderator (its first persona; its `username` is
    /// replaced by `name`). Default: no attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<PathBuf>,
    /// Moderator instruction `.txt` files or folders: one more axis of the plan.
    pub instructions: Paths,
    #[serde(default)]
    pub policy: ModeratorPolicy,
}

fn default_moderator_name() -> String {
    "moderator".to_string()
}

/// `[annotation]`: annotator personas label comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotationSpec {
    /// SDF persona files or folders: one annotator each.
    pub annotators: Paths,
    /// The instruction `.txt` file every annotator gets.
    pub instructions: PathBuf,
    /// What is measured (e.g. `toxicity`).
    pub scale: String,
    pub parser: ScoreParser,
    /// Comments before the labelled one that the annotator sees (default 4).
    #[serde(default = "default_window")]
    pub context_window: usize,
    /// Label moderator comments too (default true; they are always visible as context).
    #[serde(default = "yes")]
    pub include_moderator: bool,
    /// The store corpus to annotate. Default: this experiment's discussions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<String>,
    /// The annotators' scene. Default: empty (the instructions say it all).
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub layout: AnnotationLayout,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

fn default_window() -> usize {
    4
}

fn yes() -> bool {
    true
}

/// `[judge]`: an LLM judge scores replies under a rubric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    pub rubric: RubricSpec,
    pub target: JudgeTarget,
    /// Ask this many times per item (seeded differently) and aggregate (default 1).
    #[serde(default = "one_u32")]
    pub repeats: u32,
    /// Pairwise rubrics: judge every pair in both orders, to cancel position bias.
    #[serde(default)]
    pub swap: bool,
    /// Comments before the judged reply that the judge sees (default 4).
    #[serde(default = "default_window")]
    pub context_window: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

fn one_u32() -> u32 {
    1
}

/// What a judge scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JudgeTarget {
    /// Comments of a store corpus (default: this experiment's discussions) by speakers of
    /// these roles (default: users), each with the comments before it as context.
    Turns {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        corpus: Option<String>,
        #[serde(default = "user_roles")]
        roles: Vec<agora_core::Role>,
    },
    /// This experiment's continuations, one by one.
    Continuations,
    /// Pairs of this experiment's continuations of the same cut: each strategy against
    /// `baseline` (a strategy name), under a pairwise rubric.
    ContinuationPairs { baseline: String },
}

fn user_roles() -> Vec<agora_core::Role> {
    vec![agora_core::Role::User]
}

/// `[continuation]`: continue conversations once per strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinuationSpec {
    /// The store corpus whose conversations are continued (e.g. an imported ESConv).
    pub corpus: String,
    pub strategies: StrategySet,
    #[serde(default = "default_layout")]
    pub layout: HistoryLayout,
    pub cuts: CutSpec,
    /// At most this many conversations (in store order). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

fn default_layout() -> HistoryLayout {
    HistoryLayout::Full
}

impl Experiment {
    /// Parses an experiment file's text; errors name the line and field (`place` is the
    /// file, for the message).
    pub fn from_toml(text: &str, place: &str) -> Result<Experiment> {
        let experiment: Experiment =
            toml::from_str(text).map_err(|error| SimError::config(place, one_line(&error.to_string())))?;
        experiment.validate(place)?;
        Ok(experiment)
    }

    pub fn validate(&self, place: &str) -> Result<()> {
        let valid_name = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(SimError::config(
                format!("{place}: name"),
                format!(
                    "`{}` is not a valid experiment name (use letters, digits, `-`, `_`, `.`)",
                    self.name
                ),
            ));
        }
        if self.discussions.is_none()
            && self.annotation.is_none()
            && self.judge.is_none()
            && self.continuation.is_none()
        {
            return Err(SimError::config(
                place,
                "nothing to run: add [discussions], [annotation], [judge] or [continuation]",
            ));
        }
        if let Some(discussions) = &self.discussions {
            if let Some(policy) = &discussions.turn_policy {
                policy.validate(&format!("{place}: discussions.turn_policy"))?;
            }
            if discussions.repeats == 0 || discussions.count == Some(0) || discussions.users == Some(0) {
                return Err(SimError::config(
                    format!("{place}: discussions"),
                    "repeats, count and users must be at least 1",
                ));
            }
        }
        if let Some(judge) = &self.judge
            && judge.repeats == 0
        {
            return Err(SimError::config(format!("{place}: judge.repeats"), "must be at least 1"));
        }
        Ok(())
    }

    /// The sampling of a stage: its own, else the experiment's.
    pub fn stage_sampling(&self, own: &Option<Sampling>) -> Sampling {
        own.clone().unwrap_or_else(|| self.sampling.clone())
    }
}

/// toml's messages span several lines (a caret drawing); agora's errors are one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}
