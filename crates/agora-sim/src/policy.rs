//! Who speaks next. Turn policies choose the next user of a discussion; the moderator
//! policy says when the moderator speaks. Every choice is a pure function of the turns so
//! far and a generator seeded for that decision, so a resumed discussion makes exactly the
//! choices an uninterrupted one would have made.

use agora_core::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::{Result, SimError};

/// How the next speaker among the discussion's users is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TurnPolicy {
    /// Users in their order, cycling (the framework's `round_robin`).
    RoundRobin,
    /// Any user but the previous speaker, uniformly (nobody speaks twice in a row).
    Random,
    /// With `probability` the previous speaker's addressee replies (the user they
    /// @mentioned, else the speaker before them); otherwise any user but the previous
    /// speaker, uniformly. This is what the framework's `random_weighted` policy was meant
    /// to do: its code let the previous speaker talk again and never used the speaker
    /// before.
    RespondBack { probability: f64 },
}

impl Default for TurnPolicy {
    fn default() -> TurnPolicy {
        TurnPolicy::RespondBack { probability: 0.5 }
    }
}

impl TurnPolicy {
    /// The framework's names: `round_robin`, `random_weighted` (with its
    /// `respond_probability`), and agora's `random`.
    pub fn from_framework(name: &str, respond_probability: Option<f64>) -> Result<TurnPolicy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "round_robin" | "round_robbin" => Ok(TurnPolicy::RoundRobin),
            "random" => Ok(TurnPolicy::Random),
            "random_weighted" | "respond_back" => {
                Ok(TurnPolicy::RespondBack { probability: respond_probability.unwrap_or(0.5) })
            }
            other => Err(SimError::config(
                "turn_manager_type",
                format!("unknown turn policy `{other}` (expected round_robin, random or random_weighted)"),
            )),
        }
    }

    pub fn validate(&self, place: &str) -> Result<()> {
        if let TurnPolicy::RespondBack { probability } = self
            && !(0.0..=1.0).contains(probability)
        {
            return Err(SimError::config(
                place,
                format!("respond-back probability must be within 0..=1, found {probability}"),
            ));
        }
        Ok(())
    }

    /// The index (into `speakers`) of who speaks next, given the policy turns so far
    /// (`previous`: speaker index and text, oldest first).
    pub fn next_speaker(
        &self,
        speakers: &[String],
        previous: &[(usize, &str)],
        rng: &mut SplitMix64,
    ) -> usize {
        let count = speakers.len();
        if count <= 1 {
            return 0;
        }
        let last = previous.last().map(|(speaker, _)| *speaker);
        match self {
            TurnPolicy::RoundRobin => previous.len() % count,
            TurnPolicy::Random => other_than(last, count, rng),
            TurnPolicy::RespondBack { probability } => {
                let addressee = last.and_then(|last| addressee(speakers, previous, last));
                // Draw the coin first, always, so the generator's use does not depend
                // on whether there is an addressee.
                let respond = rng.next_f64() < *probability;
                match addressee {
                    Some(addressee) if respond => addressee,
                    _ => other_than(last, count, rng),
                }
            }
        }
    }
}

/// Uniform over `0..count` without `excluded`.
fn other_than(excluded: Option<usize>, count: usize, rng: &mut SplitMix64) -> usize {
    match excluded {
        Some(excluded) if excluded < count => {
            let pick = rng.below(count - 1);
            if pick >= excluded { pick + 1 } else { pick }
        }
        _ => rng.below(count),
    }
}

/// Whom the last turn answered: the last `@name` of another speaker in its text, else the
/// speaker of the turn before it.
fn addressee(speakers: &[String], previous: &[(usize, &str)], last: usize) -> Option<usize> {
    let (_, text) = previous.last()?;
    let mentioned = mentions(text)
        .filter_map(|name| speakers.iter().position(|speaker| speaker.eq_ignore_ascii_case(name)))
        .filter(|&speaker| speaker != last)
        .last();
    mentioned.or_else(|| {
        previous.iter().rev().skip(1).map(|(speaker, _)| *speaker).find(|&speaker| speaker != last)
    })
}

/// The `@name` mentions of a text (name = letters, digits, `_`, `-`, `.` not at the end).
fn mentions(text: &str) -> impl Iterator<Item = &str> {
    text.split('@').skip(1).filter_map(|rest| {
        let end = rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map_or(rest.len(), |(index, _)| index);
        let name = rest[..end].trim_end_matches('.');
        (!name.is_empty()).then_some(name)
    })
}

/// When the moderator speaks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModeratorPolicy {
    /// After every user turn that said something (the framework's behaviour).
    #[default]
    AfterEveryUserTurn,
    /// After every `n`-th user turn that said something.
    EveryNUserTurns { n: u32 },
    /// The moderator is one more speaker for the turn policy to choose.
    AsParticipant,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("U{index}")).collect()
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let speakers = names(3);
        let mut rng = SplitMix64::new(1);
        let mut previous: Vec<(usize, &str)> = Vec::new();
        let mut order = Vec::new();
        for _ in 0..7 {
            let next = TurnPolicy::RoundRobin.next_speaker(&speakers, &previous, &mut rng);
            order.push(next);
            previous.push((next, ""));
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_never_repeats_the_previous_speaker_and_reaches_everyone() {
        let speakers = names(4);
        let mut previous: Vec<(usize, &str)> = Vec::new();
        let mut seen = [0usize; 4];
        for turn in 0..400u64 {
            let mut rng = SplitMix64::new(agora_core::mix64(turn + 1));
            let next = TurnPolicy::Random.next_speaker(&speakers, &previous, &mut rng);
            if let Some((last, _)) = previous.last() {
                assert_ne!(next, *last, "turn {turn}");
            }
            seen[next] += 1;
            previous.push((next, ""));
        }
        assert!(seen.iter().all(|&count| count > 60), "{seen:?}");
    }

    #[test]
    fn mentions_name_the_addressee() {
        let speakers = vec!["Ann".to_string(), "Bo_2".to_string(), "Cy".to_string()];
        // Cy spoke last and mentioned Ann: Ann is the addressee, not Bo_2 who spoke before.
        let previous = [(1, "hi"), (2, "I disagree, @ann. And @nobody.")];
        assert_eq!(addressee(&speakers, &previous, 2), Some(0));
        let previous = [(1, "hi"), (2, "no mention")];
        assert_eq!(addressee(&speakers, &previous, 2), Some(1));
        let previous = [(2, "first words")];
        assert_eq!(addressee(&speakers, &previous, 2), None);
        assert_eq!(mentions("@a.b. @c, @").collect::<Vec<_>>(), ["a.b", "c"]);
    }

    #[test]
    fn framework_names_map_to_policies() {
        assert_eq!(
            TurnPolicy::from_framework("random_weighted", Some(0.3)).unwrap(),
            TurnPolicy::RespondBack { probability: 0.3 }
        );
        assert_eq!(TurnPolicy::from_framework("Round_Robin", None).unwrap(), TurnPolicy::RoundRobin);
        assert!(TurnPolicy::from_framework("loudest", None).unwrap_err().to_string().contains("loudest"));
        assert!(TurnPolicy::RespondBack { probability: 1.5 }.validate("x").is_err());
    }
}
