//! `agora experiment plan`: the modular inputs of an experiment — personas x topics x user
//! instructions x moderator instructions — expanded into concrete, seeded discussion
//! plans, as the framework's config generator did. The same file and seed always give the
//! same plans.

use agora_core::{Persona, SplitMix64, mix64};
use agora_llm::Sampling;

use crate::discussion::DiscussionPlan;
use crate::experiment::{DEFAULT_CONTEXT, DiscussionsSpec};
use crate::policy::TurnPolicy;
use crate::prompt::Agent;
use crate::{Result, SimError};

/// A named text input (a topic or an instruction file: its stem and its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedText {
    pub name: String,
    pub text: String,
}

/// Settings read from an SDF config file (`framework_config`); the experiment file's own
/// settings win over these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameworkSettings {
    pub turns: Option<u32>,
    pub context_window: Option<usize>,
    pub turn_policy: Option<TurnPolicy>,
    pub users: Option<usize>,
    pub context: Option<String>,
}

/// The inputs of `[discussions]`, read from their files.
#[derive(Debug, Clone, Default)]
pub struct DiscussionInputs {
    pub personas: Vec<Persona>,
    pub topics: Vec<NamedText>,
    pub user_instructions: Vec<NamedText>,
    pub moderator_persona: Option<Persona>,
    pub moderator_instructions: Vec<NamedText>,
    pub framework: FrameworkSettings,
}

/// Expands `[discussions]` into plans `d0000`, `d0001`, ...: every combination of topic,
/// user instructions and moderator instructions `repeats` times, or `count` discussions
/// each drawing a combination; each discussion draws its users from the personas.
pub fn plan_discussions(
    spec: &DiscussionsSpec,
    inputs: &DiscussionInputs,
    seed: u64,
    sampling: &Sampling,
) -> Result<Vec<DiscussionPlan>> {
    if inputs.personas.is_empty() {
        return Err(SimError::config("discussions.personas", "no personas found"));
    }
    if inputs.topics.is_empty() {
        return Err(SimError::config("discussions.topics", "no topics found"));
    }
    let mut names = std::collections::HashSet::new();
    for persona in &inputs.personas {
        if !names.insert(persona.name.as_str()) {
            return Err(SimError::config(
                "discussions.personas",
                format!("two personas are named `{}`: names must be unique", persona.name),
            ));
        }
    }
    let framework = &inputs.framework;
    let users_per_discussion = spec.users.or(framework.users).unwrap_or(inputs.personas.len());
    if users_per_discussion > inputs.personas.len() {
        return Err(SimError::config(
            "discussions.users",
            format!(
                "{users_per_discussion} users per discussion but only {} personas",
                inputs.personas.len()
            ),
        ));
    }
    let no_instructions = [NamedText { name: String::new(), text: String::new() }];
    let user_instructions: &[NamedText] =
        if inputs.user_instructions.is_empty() { &no_instructions } else { &inputs.user_instructions };
    let moderator_instructions: &[NamedText] = match &spec.moderator {
        Some(_) if inputs.moderator_instructions.is_empty() => {
            return Err(SimError::config("discussions.moderator.instructions", "no instruction files found"));
        }
        Some(_) => &inputs.moderator_instructions,
        None => &no_instructions,
    };

    // Every combination, in a fixed order.
    let mut combinations = Vec::new();
    for topic in &inputs.topics {
        for user in user_instructions {
            for moderator in moderator_instructions {
                combinations.push((topic, user, moderator));
            }
        }
    }
    let chosen: Vec<_> = match spec.count {
        Some(count) => {
            let mut rng = SplitMix64::new(mix64(seed ^ 0xC0B1));
            (0..count).map(|_| combinations[rng.below(combinations.len())]).collect()
        }
        None => (0..spec.repeats).flat_map(|_| combinations.iter().copied()).collect(),
    };

    let turn_policy = spec.turn_policy.clone().or_else(|| framework.turn_policy.clone()).unwrap_or_default();
    let context = spec
        .context
        .clone()
        .or_else(|| framework.context.clone())
        .unwrap_or_else(|| DEFAULT_CONTEXT.to_string());
    let mut plans = Vec::with_capacity(chosen.len());
    for (index, (topic, user_instruction, moderator_instruction)) in chosen.into_iter().enumerate() {
        let discussion_seed = mix64(seed ^ mix64(index as u64 + 1));
        let mut rng = SplitMix64::new(discussion_seed);
        let mut order: Vec<usize> = (0..inputs.personas.len()).collect();
        rng.shuffle(&mut order);
        let mut picked: Vec<usize> = order.into_iter().take(users_per_discussion).collect();
        picked.sort_unstable();
        let users = picked
            .into_iter()
            .map(|persona| {
                let persona = inputs.personas[persona].clone();
                Agent {
                    name: persona.name.clone(),
                    persona,
                    instructions: user_instruction.text.clone(),
                    instructions_name: user_instruction.name.clone(),
                }
            })
            .collect();
        let moderator = spec.moderator.as_ref().map(|moderator| {
            let mut persona = inputs.moderator_persona.clone().unwrap_or_default();
            persona.name = moderator.name.clone();
            Agent {
                name: moderator.name.clone(),
                persona,
                instructions: moderator_instruction.text.clone(),
                instructions_name: moderator_instruction.name.clone(),
            }
        });
        plans.push(DiscussionPlan {
            id: format!("d{index:04}"),
            seed: discussion_seed,
            topic_name: topic.name.clone(),
            topic: topic.text.clone(),
            opening_speaker: spec.opening_speaker.clone(),
            users,
            moderator_policy: spec.moderator.as_ref().map(|m| m.policy.clone()).unwrap_or_default(),
            moderator,
            turn_policy: turn_policy.clone(),
            turns: spec.turns.or(framework.turns).unwrap_or(8),
            context_window: spec.context_window.or(framework.context_window).unwrap_or(4),
            context: context.clone(),
            layout: spec.layout.clone(),
            sampling: sampling.clone(),
        });
    }
    Ok(plans)
}
