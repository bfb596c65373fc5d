//! Judge rubrics as data: what a judge model is asked, on which dimensions, and how each
//! dimension's score is read back from its reply.
//!
//! A `RubricSpec` is what an experiment file holds (a closed serde-tagged enum); `resolve`
//! checks it and turns it into a `Rubric`, which renders a `JudgeItem` into chat messages
//! and parses the judge's reply into one `Score` per dimension. The built-in prompt texts
//! are agora's own wording of the origins' judges:
//! - `likert_relevance_fluency`: the ChangeMyView SFT judge, relevance and fluency of a
//!   reply to a CMV post, each on 1-7;
//! - `pairwise_strategy`: the ESConv-SRA judge, which of two replies A and B follows a
//!   support strategy better, `[[A]]`, `[[B]]` or `[[C]]` for a tie.
//!
//! Pairwise judges favour one position; `JudgeItem::swapped` and `unswap_verdict` let a
//! caller ask twice with A and B exchanged and map the second verdict back.

use agora_core::{Message, Score};
use serde::{Deserialize, Serialize};

use crate::parse::ScoreParser;
use crate::template::{Template, TemplateError};

/// Placeholders a single-reply rubric's template may use.
pub const SINGLE_PLACEHOLDERS: &[&str] = &[
    "conversation_history",
    "response",
    "strategy_instructions",
    "instructions",
    "dimensions",
    "output_format",
    "rubric_name",
];

/// Placeholders a pairwise rubric's template may use (the first four are the names of
/// ESConv-SRA's judge prompt file, which therefore works as a template unchanged).
pub const PAIRWISE_PLACEHOLDERS: &[&str] = &[
    "strategy_instructions",
    "conversation_history",
    "assistant_a_resp",
    "assistant_b_resp",
    "instructions",
    "dimensions",
    "output_format",
    "rubric_name",
];

/// The names `RubricSpec::builtin` knows.
pub const BUILTIN_RUBRICS: &[&str] = &["likert_relevance_fluency", "pairwise_strategy"];

const LIKERT_NAME: &str = "likert_relevance_fluency";
const PAIRWISE_NAME: &str = "pairwise_strategy";

const LIKERT_TEMPLATE: &str = "\
You are judging a reply written in a ChangeMyView discussion, where someone posts an opinion \
and invites others to change their mind.

The discussion so far:
{conversation_history}

The reply to judge:
{response}

Score the reply on each dimension below:
{dimensions}

Give one or two sentences of reasoning first. Then finish with exactly these lines, one per \
dimension, with your numbers in place of the brackets and nothing after them:
{output_format}";

const PAIRWISE_TEMPLATE: &str = "\
You are an impartial judge of emotional-support replies. Two assistants, A and B, each wrote \
the next turn of the conversation below, and both were asked to use the same support strategy.

Decide which reply applies the strategy more faithfully while answering the seeker's last \
message. Adherence to the strategy matters most; after that, consider how natural, coherent \
and consistent with the conversation each reply is. The order in which the replies appear, \
their length and the assistants' names must not sway you.

The strategy:
{strategy_instructions}

The conversation so far:
{conversation_history}

[Reply of assistant A]
{assistant_a_resp}
[End of reply A]

[Reply of assistant B]
{assistant_b_resp}
[End of reply B]

Compare the two replies in a few sentences. Then give your verdict on the last line, in \
exactly this form: JUDGE: [[A]] when A is better, JUDGE: [[B]] when B is better, or \
JUDGE: [[C]] for a tie.";

const CUSTOM_TEMPLATE: &str = "\
{instructions}

The conversation so far:
{conversation_history}

The reply to judge:
{response}

Score the reply on each dimension below:
{dimensions}

Give one or two sentences of reasoning first. Then finish with exactly these lines, one per \
dimension, with your answers in place of the brackets and nothing after them:
{output_format}";

const CUSTOM_PAIRWISE_TEMPLATE: &str = "\
{instructions}

The conversation so far:
{conversation_history}

[Reply of assistant A]
{assistant_a_resp}
[End of reply A]

[Reply of assistant B]
{assistant_b_resp}
[End of reply B]

Judge the replies on each dimension below:
{dimensions}

Compare the replies in a few sentences. Then finish with exactly these lines, with your \
answers in place of the brackets and nothing after them:
{output_format}";

/// Whether a rubric judges one reply or compares two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RubricKind {
    #[default]
    Single,
    Pairwise,
}

/// A rubric as an experiment file states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RubricSpec {
    /// `likert_relevance_fluency`: relevance and fluency of a reply, each `min..=max`.
    Likert {
        #[serde(default = "likert_default_min")]
        min: u32,
        #[serde(default = "likert_default_max")]
        max: u32,
        /// Replaces the built-in prompt text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<Template>,
    },
    /// `pairwise_strategy`: which of replies A and B follows the strategy better.
    Pairwise {
        /// Replaces the built-in prompt text, e.g. with ESConv-SRA's own prompt file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<Template>,
    },
    /// A user-defined rubric.
    Custom {
        name: String,
        #[serde(default)]
        kind: RubricKind,
        /// What the judge is told first (the `{instructions}` placeholder).
        instructions: String,
        dimensions: Vec<DimensionSpec>,
        /// The prompt text (a template file's contents); a generic layout when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<Template>,
    },
}

fn likert_default_min() -> u32 {
    1
}

fn likert_default_max() -> u32 {
    7
}

/// One dimension of a custom rubric as written. A single-reply dimension needs `min` and
/// `max` (it is read as `Name: <n>`); a pairwise one is read as a verdict `[[A]]`, `[[B]]`
/// or `[[C]]`. `parser` replaces either default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimensionSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parser: Option<ScoreParser>,
}

/// What a rubric scores, and how its score is read. The range lives in the parser only, so
/// the two cannot disagree (`range()` reads it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub description: String,
    pub parser: ScoreParser,
}

impl Dimension {
    /// The numeric range, for dimensions scored with a number.
    pub fn range(&self) -> Option<(f64, f64)> {
        self.parser.range()
    }

    /// A short name of the scale for stored judgements: `likert-1-7`, `verdict-A-B-C`,
    /// `label-yes-no`.
    pub fn scale(&self) -> String {
        match &self.parser {
            ScoreParser::KeyValue { min, max, .. } | ScoreParser::Number { min, max } => {
                format!("likert-{min}-{max}")
            }
            ScoreParser::Verdict { choices } => format!("verdict-{}", choices.join("-")),
            ScoreParser::Label { labels } => format!("label-{}", labels.join("-")),
        }
    }

    /// The dimension's line in the `{dimensions}` list.
    fn describe(&self) -> String {
        let range = match self.range() {
            Some((min, max)) => format!(" ({min} to {max})"),
            None => String::new(),
        };
        let description =
            if self.description.is_empty() { String::new() } else { format!(": {}", self.description) };
        format!("- {}{range}{description}", self.name)
    }

    /// The line the judge is asked to end with, in the form the parser reads first.
    fn output_line(&self) -> String {
        match &self.parser {
            ScoreParser::KeyValue { key, min, max } => format!("{key}: <a number from {min} to {max}>"),
            ScoreParser::Number { min, max } => format!("Rating: <a number from {min} to {max}>"),
            ScoreParser::Verdict { choices } => {
                let options: Vec<String> = choices.iter().map(|choice| format!("[[{choice}]]")).collect();
                format!("JUDGE: <one of {}>", options.join(", "))
            }
            ScoreParser::Label { labels } => format!("{}: <one of: {}>", self.name, labels.join(", ")),
        }
    }
}

/// A checked rubric, ready to render prompts and read replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rubric {
    pub name: String,
    pub kind: RubricKind,
    /// Filled into `{instructions}`; empty for the built-ins, whose text is the template.
    pub instructions: String,
    pub dimensions: Vec<Dimension>,
    pub template: Template,
}

/// What one judge call looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JudgeItem {
    /// One reply to judge after `context`, a list of (speaker, text) turns.
    Single { context: Vec<(String, String)>, reply: String, strategy: Option<String> },
    /// Two replies `a` and `b` to compare after `context`.
    Pair { context: Vec<(String, String)>, strategy: Option<String>, a: String, b: String },
}

impl JudgeItem {
    /// The same item with replies A and B exchanged (a single item is returned unchanged).
    /// Judge both orders and map the second verdict back with `unswap_verdict`.
    pub fn swapped(&self) -> JudgeItem {
        match self {
            JudgeItem::Pair { context, strategy, a, b } => JudgeItem::Pair {
                context: context.clone(),
                strategy: strategy.clone(),
                a: b.clone(),
                b: a.clone(),
            },
            single @ JudgeItem::Single { .. } => single.clone(),
        }
    }

    fn kind(&self) -> RubricKind {
        match self {
            JudgeItem::Single { .. } => RubricKind::Single,
            JudgeItem::Pair { .. } => RubricKind::Pairwise,
        }
    }
}

/// Maps a verdict on a swapped item back to the original order: `A` and `B` exchange
/// (ASCII case-insensitively, keeping the case); a tie, other scores and unparsed replies
/// are unchanged.
pub fn unswap_verdict(score: Score) -> Score {
    match score {
        Score::Label { label } => {
            let unswapped = match label.as_str() {
                "A" => "B",
                "B" => "A",
                "a" => "b",
                "b" => "a",
                other => other,
            };
            Score::Label { label: unswapped.to_string() }
        }
        other => other,
    }
}

/// Why a rubric cannot be resolved or rendered. Each error names the rubric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RubricError {
    #[error("unknown built-in rubric `{name}`; built-ins: {}", BUILTIN_RUBRICS.join(", "))]
    UnknownBuiltin { name: String },
    #[error("rubric `{rubric}`: {source}")]
    Template { rubric: String, source: TemplateError },
    #[error("rubric `{rubric}`: the template never shows the judge `{{{placeholder}}}`")]
    MissingPlaceholder { rubric: String, placeholder: String },
    #[error("rubric `{rubric}` has no dimensions")]
    NoDimensions { rubric: String },
    #[error("rubric `{rubric}` names dimension `{dimension}` twice")]
    DuplicateDimension { rubric: String, dimension: String },
    #[error("rubric `{rubric}`, dimension `{dimension}`: {problem}")]
    BadDimension { rubric: String, dimension: String, problem: String },
    #[error("rubric `{rubric}` judges {expected:?} items but was given a {given:?} item")]
    WrongItemKind { rubric: String, expected: RubricKind, given: RubricKind },
    #[error("rubric `{rubric}` shows the judge a strategy, but the item has none")]
    MissingStrategy { rubric: String },
}

impl RubricSpec {
    /// The built-in rubric called `name` (see `BUILTIN_RUBRICS`), with default settings.
    pub fn builtin(name: &str) -> Result<RubricSpec, RubricError> {
        match name {
            LIKERT_NAME => Ok(RubricSpec::Likert {
                min: likert_default_min(),
                max: likert_default_max(),
                template: None,
            }),
            PAIRWISE_NAME => Ok(RubricSpec::Pairwise { template: None }),
            _ => Err(RubricError::UnknownBuiltin { name: name.to_string() }),
        }
    }

    /// Checks the spec and builds the rubric: templates use only allowed placeholders and
    /// show the reply (or both replies), dimensions exist, have distinct names and ranges
    /// with `min < max`.
    pub fn resolve(&self) -> Result<Rubric, RubricError> {
        let (name, kind, instructions, dimensions, template) = match self {
            RubricSpec::Likert { min, max, template } => {
                let (min, max) = (f64::from(*min), f64::from(*max));
                let dimension = |name: &str, description: &str| Dimension {
                    name: name.to_string(),
                    description: description.to_string(),
                    parser: ScoreParser::KeyValue { key: name.to_string(), min, max },
                };
                let dimensions = vec![
                    dimension(
                        "Relevance",
                        "how directly the reply engages with the post and its arguments instead of drifting off topic",
                    ),
                    dimension("Fluency", "how clear, grammatical and natural the reply reads"),
                ];
                (
                    LIKERT_NAME.to_string(),
                    RubricKind::Single,
                    String::new(),
                    dimensions,
                    template_or(template, LIKERT_TEMPLATE),
                )
            }
            RubricSpec::Pairwise { template } => {
                let dimensions = vec![Dimension {
                    name: "strategy_adherence".to_string(),
                    description: "which reply follows the given support strategy better; C for a tie"
                        .to_string(),
                    parser: verdict_parser(),
                }];
                let template = template_or(template, PAIRWISE_TEMPLATE);
                (PAIRWISE_NAME.to_string(), RubricKind::Pairwise, String::new(), dimensions, template)
            }
            RubricSpec::Custom { name, kind, instructions, dimensions, template } => {
                let default_text = match kind {
                    RubricKind::Single => CUSTOM_TEMPLATE,
                    RubricKind::Pairwise => CUSTOM_PAIRWISE_TEMPLATE,
                };
                let dimensions = custom_dimensions(name, *kind, dimensions)?;
                (name.clone(), *kind, instructions.clone(), dimensions, template_or(template, default_text))
            }
        };
        let rubric = Rubric { name, kind, instructions, dimensions, template };
        rubric.check()?;
        Ok(rubric)
    }
}

fn template_or(template: &Option<Template>, default_text: &'static str) -> Template {
    match template {
        Some(template) => template.clone(),
        None => Template::builtin(default_text),
    }
}

fn verdict_parser() -> ScoreParser {
    ScoreParser::Verdict { choices: vec!["A".to_string(), "B".to_string(), "C".to_string()] }
}

fn custom_dimensions(
    rubric: &str,
    kind: RubricKind,
    specs: &[DimensionSpec],
) -> Result<Vec<Dimension>, RubricError> {
    let defaulted_verdicts = specs.iter().filter(|spec| spec.parser.is_none()).count();
    specs
        .iter()
        .map(|spec| {
            let problem = |problem: &str| RubricError::BadDimension {
                rubric: rubric.to_string(),
                dimension: spec.name.clone(),
                problem: problem.to_string(),
            };
            let parser = match (&spec.parser, kind) {
                (Some(parser), _) => parser.clone(),
                (None, RubricKind::Single) => match (spec.min, spec.max) {
                    (Some(min), Some(max)) => ScoreParser::KeyValue { key: spec.name.clone(), min, max },
                    _ => return Err(problem("a single-reply dimension needs `min` and `max` (or a `parser`)")),
                },
                (None, RubricKind::Pairwise) if defaulted_verdicts > 1 => {
                    return Err(problem(
                        "several pairwise dimensions would all be read from the same [[A]]/[[B]]/[[C]] verdict; \
                         give each a `parser`",
                    ));
                }
                (None, RubricKind::Pairwise) => verdict_parser(),
            };
            Ok(Dimension { name: spec.name.clone(), description: spec.description.clone(), parser })
        })
        .collect()
}

impl Rubric {
    fn check(&self) -> Result<(), RubricError> {
        let rubric = || self.name.clone();
        let (allowed, required): (&[&str], &[&str]) = match self.kind {
            RubricKind::Single => (SINGLE_PLACEHOLDERS, &["response"]),
            RubricKind::Pairwise => (PAIRWISE_PLACEHOLDERS, &["assistant_a_resp", "assistant_b_resp"]),
        };
        self.template
            .check_allowed(allowed)
            .map_err(|source| RubricError::Template { rubric: rubric(), source })?;
        if let Some(missing) = required.iter().find(|name| !self.template.uses(name)) {
            return Err(RubricError::MissingPlaceholder {
                rubric: rubric(),
                placeholder: missing.to_string(),
            });
        }
        if self.dimensions.is_empty() {
            return Err(RubricError::NoDimensions { rubric: rubric() });
        }
        for (index, dimension) in self.dimensions.iter().enumerate() {
            if self.dimensions[..index]
                .iter()
                .any(|earlier| earlier.name.eq_ignore_ascii_case(&dimension.name))
            {
                return Err(RubricError::DuplicateDimension {
                    rubric: rubric(),
                    dimension: dimension.name.clone(),
                });
            }
            if let Some((min, max)) = dimension.range()
                && min.partial_cmp(&max) != Some(std::cmp::Ordering::Less)
            {
                return Err(RubricError::BadDimension {
                    rubric: rubric(),
                    dimension: dimension.name.clone(),
                    problem: format!("the range {min} to {max} is empty or reversed"),
                });
            }
        }
        Ok(())
    }

    /// The chat messages that ask the judge about `item`: one user message holding the
    /// filled template (the origins' judges were single prompts too).
    pub fn render(&self, item: &JudgeItem) -> Result<Vec<Message>, RubricError> {
        if item.kind() != self.kind {
            return Err(RubricError::WrongItemKind {
                rubric: self.name.clone(),
                expected: self.kind,
                given: item.kind(),
            });
        }
        let (context, strategy, replies): (_, _, Vec<(&str, &str)>) = match item {
            JudgeItem::Single { context, reply, strategy } => {
                (context, strategy, vec![("response", reply.as_str())])
            }
            JudgeItem::Pair { context, strategy, a, b } => {
                (context, strategy, vec![("assistant_a_resp", a.as_str()), ("assistant_b_resp", b.as_str())])
            }
        };
        let strategy = match strategy {
            Some(strategy) => strategy.as_str(),
            None if self.template.uses("strategy_instructions") => {
                return Err(RubricError::MissingStrategy { rubric: self.name.clone() });
            }
            None => "",
        };
        let history = format_history(context);
        let dimensions: Vec<String> = self.dimensions.iter().map(Dimension::describe).collect();
        let output_format: Vec<String> = self.dimensions.iter().map(Dimension::output_line).collect();
        let (dimensions, output_format) = (dimensions.join("\n"), output_format.join("\n"));
        let mut values: Vec<(&str, &str)> = vec![
            ("conversation_history", history.as_str()),
            ("strategy_instructions", strategy),
            ("instructions", self.instructions.as_str()),
            ("dimensions", dimensions.as_str()),
            ("output_format", output_format.as_str()),
            ("rubric_name", self.name.as_str()),
        ];
        values.extend(replies);
        let prompt = self
            .template
            .fill(&values)
            .map_err(|source| RubricError::Template { rubric: self.name.clone(), source })?;
        Ok(vec![Message::user(prompt)])
    }

    /// Reads the judge's reply: one (dimension name, score) per dimension, in order, with
    /// `Score::Unparsed` holding the whole reply for each dimension that cannot be read.
    pub fn parse(&self, reply: &str) -> Vec<(String, Score)> {
        self.dimensions
            .iter()
            .map(|dimension| (dimension.name.clone(), dimension.parser.parse(reply)))
            .collect()
    }
}

/// `speaker: text` lines; a placeholder line when the reply opens the conversation.
fn format_history(context: &[(String, String)]) -> String {
    if context.is_empty() {
        return "(nothing was said before the reply)".to_string();
    }
    let lines: Vec<String> =
        context.iter().map(|(speaker, text)| format!("{speaker}: {}", text.trim())).collect();
    lines.join("\n")
}
