//! The eight ESConv support strategies, their canonical names and the variant spellings
//! found in ESConv derivatives ("Questions", "Other", "Affirmation & Reassurance", ...).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ESConv support strategy (Liu et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    Question,
    RestatementOrParaphrasing,
    ReflectionOfFeelings,
    SelfDisclosure,
    AffirmationAndReassurance,
    ProvidingSuggestions,
    Information,
    Others,
}

/// The outcome of reading a strategy label: the strategy, and whether the label was
/// a variant spelling rather than the canonical name (for the import report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyMatch {
    pub strategy: Strategy,
    pub was_variant: bool,
}

impl Strategy {
    pub const ALL: [Strategy; 8] = [
        Strategy::Question,
        Strategy::RestatementOrParaphrasing,
        Strategy::ReflectionOfFeelings,
        Strategy::SelfDisclosure,
        Strategy::AffirmationAndReassurance,
        Strategy::ProvidingSuggestions,
        Strategy::Information,
        Strategy::Others,
    ];

    /// The name exactly as ESConv.json spells it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Question => "Question",
            Strategy::RestatementOrParaphrasing => "Restatement or Paraphrasing",
            Strategy::ReflectionOfFeelings => "Reflection of feelings",
            Strategy::SelfDisclosure => "Self-disclosure",
            Strategy::AffirmationAndReassurance => "Affirmation and Reassurance",
            Strategy::ProvidingSuggestions => "Providing Suggestions",
            Strategy::Information => "Information",
            Strategy::Others => "Others",
        }
    }

    /// A one-sentence definition (from the ESConv paper), usable in prompts.
    pub fn description(self) -> &'static str {
        match self {
            Strategy::Question => {
                "Ask open-ended or specific questions to help the seeker articulate the problem."
            }
            Strategy::RestatementOrParaphrasing => {
                "Restate the seeker's statements more concisely so they can see their situation clearly."
            }
            Strategy::ReflectionOfFeelings => {
                "Articulate and describe the seeker's feelings to show understanding and empathy."
            }
            Strategy::SelfDisclosure => "Share similar experiences or emotions to express empathy.",
            Strategy::AffirmationAndReassurance => {
                "Affirm the seeker's strengths, motivation and capabilities, and provide reassurance."
            }
            Strategy::ProvidingSuggestions => "Suggest ways forward, without telling the seeker what to do.",
            Strategy::Information => {
                "Provide useful information, such as data, facts, opinions or resources."
            }
            Strategy::Others => "Exchange pleasantries or use strategies outside the other categories.",
        }
    }

    /// Reads a label, accepting the canonical names and their known variant spellings
    /// (case, punctuation, `&` for `and`, plurals, "Other"). `None` for anything else.
    pub fn from_label(label: &str) -> Option<StrategyMatch> {
        let trimmed = label.trim();
        if let Some(strategy) = Strategy::ALL.into_iter().find(|s| s.name() == trimmed) {
            return Some(StrategyMatch { strategy, was_variant: false });
        }
        let key: String = trimmed
            .to_lowercase()
            .replace('&', " and ")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let strategy = match key.as_str() {
            "question" | "questions" | "questioning" => Strategy::Question,
            "restatementorparaphrasing"
            | "restatementandparaphrasing"
            | "restatement"
            | "paraphrasing"
            | "restatementparaphrasing" => Strategy::RestatementOrParaphrasing,
            "reflectionoffeelings" | "reflectionoffeeling" | "reflection" => Strategy::ReflectionOfFeelings,
            "selfdisclosure" | "selfdisclosures" => Strategy::SelfDisclosure,
            "affirmationandreassurance" | "affirmationreassurance" | "affirmation" | "reassurance" => {
                Strategy::AffirmationAndReassurance
            }
            "providingsuggestions" | "providingsuggestion" | "suggestions" | "suggestion" => {
                Strategy::ProvidingSuggestions
            }
            "information" | "providinginformation" => Strategy::Information,
            "others" | "other" => Strategy::Others,
            _ => return None,
        };
        Some(StrategyMatch { strategy, was_variant: true })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Strategy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = String::deserialize(deserializer)?;
        Strategy::from_label(&label)
            .map(|found| found.strategy)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown strategy `{label}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(label: &str, expected: Option<(Strategy, bool)>) {
        let found = Strategy::from_label(label).map(|m| (m.strategy, m.was_variant));
        assert_eq!(found, expected, "label {label:?}");
    }

    #[test]
    fn canonical_names_are_not_variants() {
        for strategy in Strategy::ALL {
            check(strategy.name(), Some((strategy, false)));
        }
    }

    #[test]
    fn variant_spellings_map_with_a_flag() {
        check("Questions", Some((Strategy::Question, true)));
        check("Other", Some((Strategy::Others, true)));
        check("Affirmation & Reassurance", Some((Strategy::AffirmationAndReassurance, true)));
        check("self disclosure", Some((Strategy::SelfDisclosure, true)));
        check("Reflection of Feelings", Some((Strategy::ReflectionOfFeelings, true)));
        check("Providing suggestions", Some((Strategy::ProvidingSuggestions, true)));
    }

    #[test]
    fn unknown_labels_are_refused() {
        check("Sarcasm", None);
        check("", None);
    }

    #[test]
    fn serde_round_trip_uses_canonical_names() {
        let json = serde_json::to_string(&Strategy::SelfDisclosure).unwrap();
        assert_eq!(json, "\"Self-disclosure\"");
        let back: Strategy = serde_json::from_str("\"Questions\"").unwrap();
        assert_eq!(back, Strategy::Question);
        assert!(serde_json::from_str::<Strategy>("\"Sarcasm\"").is_err());
    }
}
