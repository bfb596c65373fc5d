//! Strategy sets for strategy-conditioned continuations: the 8 ESConv strategies, the 15
//! ExTES strategies, the 15 that ESConv-SRA prompted with, or a user's own list.
//!
//! The ExTES names are those of Zheng et al. 2023, "Building Emotional Support Chatbots in
//! the Era of LLMs" (their 16th label, "Others", is a catch-all and is left out: it cannot
//! be asked for). The descriptions are agora's own one-sentence wording.

use agora_core::Strategy;
use serde::{Deserialize, Serialize};

/// A strategy as a prompt names and explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyDef {
    pub name: String,
    pub description: String,
}

impl StrategyDef {
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> StrategyDef {
        StrategyDef { name: name.into(), description: description.into() }
    }
}

/// Which strategies to continue a conversation with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StrategySet {
    /// The 8 ESConv strategies (Liu et al. 2021), with agora-core's names and descriptions.
    Esconv,
    /// The 15 ExTES strategies (Zheng et al. 2023), in the paper's order.
    Extes,
    /// The 15 ESConv-SRA continued with: ExTES without "Empathetic Statements", plus
    /// "Chit Chat". Use it to reproduce that work's runs.
    ExtesSra,
    /// A user's own strategies.
    Custom { strategies: Vec<StrategyDef> },
}

/// The ExTES strategies with agora's descriptions.
const EXTES: [(&str, &str); 15] = [
    (
        "Reflective Statements",
        "Mirror back what the person said, in your own words, so they feel listened to.",
    ),
    (
        "Clarification",
        "Ask a question or check your understanding so that you grasp their situation correctly.",
    ),
    (
        "Emotional Validation",
        "Accept their emotions as real and reasonable, without trying to argue them away.",
    ),
    ("Empathetic Statements", "Say that you feel with them and understand how hard this is for them."),
    ("Affirmation", "Point out a strength, effort or good choice of theirs and recognise it warmly."),
    ("Offer Hope", "Convey honest confidence that things can get better and that they can get through this."),
    (
        "Avoid Judgment and Criticism",
        "Respond without blaming or criticising their thoughts, feelings or actions.",
    ),
    ("Suggest Options", "Lay out a few possible ways forward and leave the choice to them."),
    ("Collaborative Planning", "Work out concrete next steps together with them, as a team."),
    (
        "Provide Different Perspectives",
        "Offer another way of seeing the situation that may ease their distress.",
    ),
    (
        "Reframe Negative Thoughts",
        "Help turn an unhelpful, negative thought into a more balanced or realistic one.",
    ),
    ("Share Information", "Give a useful fact, resource or piece of knowledge that bears on their problem."),
    ("Normalize Experiences", "Let them know that many people go through this and feel the same way."),
    (
        "Promote Self-Care Practices",
        "Encourage small things that look after their body, mind and mood, such as rest or a walk.",
    ),
    (
        "Stress Management",
        "Suggest a practical technique for easing stress, such as slow breathing or a routine.",
    ),
];

const CHIT_CHAT: (&str, &str) =
    ("Chit Chat", "Make light, friendly small talk that builds rapport and brings a moment of normality.");

impl StrategySet {
    /// The strategies of the set, in a fixed order.
    pub fn strategies(&self) -> Vec<StrategyDef> {
        match self {
            StrategySet::Esconv => Strategy::ALL
                .iter()
                .map(|strategy| StrategyDef::new(strategy.name(), strategy.description()))
                .collect(),
            StrategySet::Extes => {
                EXTES.iter().map(|(name, description)| StrategyDef::new(*name, *description)).collect()
            }
            StrategySet::ExtesSra => EXTES
                .iter()
                .filter(|(name, _)| *name != "Empathetic Statements")
                .chain(std::iter::once(&CHIT_CHAT))
                .map(|(name, description)| StrategyDef::new(*name, *description))
                .collect(),
            StrategySet::Custom { strategies } => strategies.clone(),
        }
    }

    /// The strategy called `name` (ASCII case-insensitive), if the set has it.
    pub fn find(&self, name: &str) -> Option<StrategyDef> {
        self.strategies().into_iter().find(|strategy| strategy.name.eq_ignore_ascii_case(name.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(set: StrategySet, expected_names: &[&str]) {
        let strategies = set.strategies();
        let names: Vec<&str> = strategies.iter().map(|strategy| strategy.name.as_str()).collect();
        assert_eq!(names, expected_names, "{set:?}");
        for strategy in &strategies {
            let description = strategy.description.trim();
            assert!(description.ends_with('.'), "{}: one sentence, ending with a period", strategy.name);
            assert_eq!(description.matches(". ").count(), 0, "{}: a single sentence", strategy.name);
        }
    }

    #[test]
    fn esconv_has_agora_cores_eight_strategies() {
        check(
            StrategySet::Esconv,
            &[
                "Question",
                "Restatement or Paraphrasing",
                "Reflection of feelings",
                "Self-disclosure",
                "Affirmation and Reassurance",
                "Providing Suggestions",
                "Information",
                "Others",
            ],
        );
        assert_eq!(
            StrategySet::Esconv.find("question").unwrap().description,
            Strategy::Question.description()
        );
    }

    #[test]
    fn extes_has_the_papers_fifteen_strategies() {
        check(
            StrategySet::Extes,
            &[
                "Reflective Statements",
                "Clarification",
                "Emotional Validation",
                "Empathetic Statements",
                "Affirmation",
                "Offer Hope",
                "Avoid Judgment and Criticism",
                "Suggest Options",
                "Collaborative Planning",
                "Provide Different Perspectives",
                "Reframe Negative Thoughts",
                "Share Information",
                "Normalize Experiences",
                "Promote Self-Care Practices",
                "Stress Management",
            ],
        );
    }

    #[test]
    fn extes_sra_swaps_empathetic_statements_for_chit_chat() {
        let strategies = StrategySet::ExtesSra.strategies();
        assert_eq!(strategies.len(), 15);
        assert!(StrategySet::ExtesSra.find("Empathetic Statements").is_none());
        assert_eq!(strategies.last().unwrap().name, "Chit Chat");
        assert_eq!(
            StrategySet::ExtesSra.find("share information"),
            StrategySet::Extes.find("Share Information")
        );
    }

    #[test]
    fn sets_round_trip_through_json() {
        let custom =
            StrategySet::Custom { strategies: vec![StrategyDef::new("Humour", "Lighten the mood.")] };
        for (set, json) in [
            (StrategySet::Esconv, r#"{"type":"esconv"}"#),
            (StrategySet::Extes, r#"{"type":"extes"}"#),
            (StrategySet::ExtesSra, r#"{"type":"extes_sra"}"#),
            (
                custom.clone(),
                r#"{"type":"custom","strategies":[{"name":"Humour","description":"Lighten the mood."}]}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&set).unwrap(), json);
            assert_eq!(serde_json::from_str::<StrategySet>(json).unwrap(), set);
        }
        check(custom, &["Humour"]);
    }
}
