//! One multi-agent discussion: users with personas take turns on an opening post, a
//! moderator speaks by its own policy, each agent sees the opening post and the last K
//! comments. The discussion is a state machine over its recorded turns — `next` says who
//! speaks and with what prompt, `record` adds the reply — so a discussion resumed from
//! the turns already stored continues exactly where it stopped.

use agora_core::{Conversation, Meta, Participant, Role, Source, SplitMix64, Turn, TurnLabels, mix64};
use agora_llm::{Reply, Request, Sampling, Usage};
use serde::{Deserialize, Serialize};

use crate::policy::{ModeratorPolicy, TurnPolicy};
use crate::prompt::{Agent, DiscussionLayout, Line, clean_comment, prompt_hash};
use crate::{Result, SimError};

/// A concrete discussion, fully decided before it runs (what `agora experiment plan`
/// prints): who takes part, what they were told, the topic, the policies and the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscussionPlan {
    /// Unique within the experiment, e.g. `d0003`.
    pub id: String,
    pub seed: u64,
    /// The topic's name (file stem) and text: the opening post everyone sees.
    pub topic_name: String,
    pub topic: String,
    /// Who wrote the opening post.
    pub opening_speaker: String,
    pub users: Vec<Agent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderator: Option<Agent>,
    #[serde(default)]
    pub moderator_policy: ModeratorPolicy,
    pub turn_policy: TurnPolicy,
    /// Turns chosen by the turn policy (user turns; with `as_participant`, moderator
    /// turns it chooses count too). The moderator's own turns come on top.
    pub turns: u32,
    /// How many of the latest comments an agent sees (the opening post is always seen).
    pub context_window: usize,
    /// The scene every agent is told ("an online forum...").
    pub context: String,
    pub layout: DiscussionLayout,
    pub sampling: Sampling,
}

/// One stored turn of a simulated discussion (turn 0, the opening post, is not stored:
/// it comes from the plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimTurn {
    pub index: u32,
    pub speaker: String,
    pub role: Role,
    /// The comment, cleaned; empty when the model said nothing (kept, never dropped).
    pub text: String,
    /// What the model returned before cleaning.
    pub raw: String,
    pub model: String,
    pub finish_reason: String,
    pub usage: Usage,
    pub prompt_hash: String,
    pub seed: u64,
}

impl SimTurn {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// The next turn to generate.
#[derive(Debug, Clone)]
pub struct TurnJob {
    /// The ledger key: `<discussion id>/t<index>`.
    pub key: String,
    pub index: u32,
    pub speaker: String,
    pub role: Role,
    pub request: Request,
    pub prompt_hash: String,
}

/// A discussion in progress.
#[derive(Debug, Clone)]
pub struct Discussion {
    plan: DiscussionPlan,
    turns: Vec<SimTurn>,
}

/// The ledger key of a turn.
pub fn turn_key(discussion_id: &str, index: u32) -> String {
    format!("{discussion_id}/t{index:04}")
}

impl Discussion {
    /// A discussion continuing from `done` (its stored turns, any order). They must be the
    /// turns 1..=n without gaps: turns are generated one after another, so a gap means the
    /// store was edited or the plan changed.
    pub fn resume(plan: DiscussionPlan, mut done: Vec<SimTurn>) -> Result<Discussion> {
        plan.turn_policy.validate(&format!("{}: turn_policy", plan.id))?;
        if plan.users.is_empty() {
            return Err(SimError::config(&plan.id, "a discussion needs at least one user"));
        }
        done.sort_by_key(|turn| turn.index);
        for (position, turn) in done.iter().enumerate() {
            if turn.index as usize != position + 1 {
                return Err(SimError::config(
                    turn_key(&plan.id, turn.index),
                    format!("stored turns have a gap before turn {} (expected {})", turn.index, position + 1),
                ));
            }
        }
        Ok(Discussion { plan, turns: done })
    }

    pub fn plan(&self) -> &DiscussionPlan {
        &self.plan
    }

    pub fn turns(&self) -> &[SimTurn] {
        &self.turns
    }

    /// Speakers the turn policy chooses from: the users, and the moderator when it is a
    /// participant.
    fn pool(&self) -> Vec<(&Agent, Role)> {
        let mut pool: Vec<(&Agent, Role)> = self.plan.users.iter().map(|agent| (agent, Role::User)).collect();
        if let (Some(moderator), ModeratorPolicy::AsParticipant) =
            (&self.plan.moderator, &self.plan.moderator_policy)
        {
            pool.push((moderator, Role::Moderator));
        }
        pool
    }

    /// Turns the policy chose so far (all turns but the moderator's own-policy ones).
    fn policy_turns(&self) -> Vec<&SimTurn> {
        let as_participant = matches!(self.plan.moderator_policy, ModeratorPolicy::AsParticipant);
        self.turns.iter().filter(|turn| as_participant || turn.role != Role::Moderator).collect()
    }

    /// Whether the moderator speaks now, under its own policy, after the last turn.
    fn moderator_due(&self) -> bool {
        let Some(last) = self.turns.last() else { return false };
        if self.plan.moderator.is_none() || last.role == Role::Moderator || last.is_empty() {
            return false;
        }
        match self.plan.moderator_policy {
            ModeratorPolicy::AfterEveryUserTurn => true,
            ModeratorPolicy::EveryNUserTurns { n } => {
                let spoken =
                    self.turns.iter().filter(|turn| turn.role == Role::User && !turn.is_empty()).count();
                n > 0 && spoken % n as usize == 0
            }
            ModeratorPolicy::AsParticipant => false,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.policy_turns().len() >= self.plan.turns as usize && !self.moderator_due()
    }

    /// The next turn to generate, or `None` when the discussion is over.
    pub fn next(&self) -> Result<Option<TurnJob>> {
        let index = self.turns.len() as u32 + 1;
        let (agent, role) = if self.moderator_due() {
            match &self.plan.moderator {
                Some(moderator) => (moderator, Role::Moderator),
                None => return Ok(None),
            }
        } else {
            let chosen = self.policy_turns();
            if chosen.len() >= self.plan.turns as usize {
                return Ok(None);
            }
            let pool = self.pool();
            let names: Vec<String> = pool.iter().map(|(agent, _)| agent.name.clone()).collect();
            let previous: Vec<(usize, &str)> = chosen
                .iter()
                .filter_map(|turn| {
                    names
                        .iter()
                        .position(|name| *name == turn.speaker)
                        .map(|speaker| (speaker, turn.text.as_str()))
                })
                .collect();
            // One generator per decision, seeded by the discussion and the decision's
            // position: the same choice whether or not the run was interrupted before it.
            let mut rng = SplitMix64::new(mix64(self.plan.seed ^ mix64(0x5EED_0000 + chosen.len() as u64)));
            let next = self.plan.turn_policy.next_speaker(&names, &previous, &mut rng);
            pool[next.min(pool.len() - 1)]
        };
        let visible = self.visible_lines();
        let messages = self.plan.layout.render(
            agent,
            &self.plan.context,
            &self.plan.opening_speaker,
            &self.plan.topic,
            &visible,
        )?;
        let seed = mix64(self.plan.seed ^ mix64(u64::from(index)));
        let sampling = Sampling { seed: Some(seed), ..self.plan.sampling.clone() };
        let prompt_hash = prompt_hash(&messages);
        Ok(Some(TurnJob {
            key: turn_key(&self.plan.id, index),
            index,
            speaker: agent.name.clone(),
            role,
            request: Request::chat(messages, sampling),
            prompt_hash,
        }))
    }

    /// The last `context_window` comments that said something.
    fn visible_lines(&self) -> Vec<Line<'_>> {
        let spoken: Vec<&SimTurn> = self.turns.iter().filter(|turn| !turn.is_empty()).collect();
        let start = spoken.len().saturating_sub(self.plan.context_window);
        spoken[start..].iter().map(|turn| Line { speaker: &turn.speaker, text: &turn.text }).collect()
    }

    /// Adds the reply to `job` and returns the stored turn.
    pub fn record(&mut self, job: &TurnJob, reply: &Reply) -> Result<SimTurn> {
        if job.index != self.turns.len() as u32 + 1 {
            return Err(SimError::config(&job.key, "a reply arrived for a turn that is not the next one"));
        }
        let turn = SimTurn {
            index: job.index,
            speaker: job.speaker.clone(),
            role: job.role,
            text: clean_comment(&reply.text, &job.speaker),
            raw: reply.text.clone(),
            model: reply.model.clone(),
            finish_reason: reply.finish_reason.as_str().to_string(),
            usage: reply.usage,
            prompt_hash: job.prompt_hash.clone(),
            seed: job.request.sampling.seed.unwrap_or_default(),
        };
        self.turns.push(turn.clone());
        Ok(turn)
    }

    /// The discussion as a conversation of the store: turn 0 is the opening post, then
    /// every recorded turn, empty ones included (flagged `empty` in their labels).
    pub fn to_conversation(&self, experiment: &str) -> Conversation {
        let plan = &self.plan;
        let mut participants =
            vec![Participant { name: plan.opening_speaker.clone(), role: Role::User, persona: None }];
        for agent in &plan.users {
            participants.push(Participant {
                name: agent.name.clone(),
                role: Role::User,
                persona: Some(agent.persona.clone()),
            });
        }
        if let Some(moderator) = &plan.moderator {
            participants.push(Participant {
                name: moderator.name.clone(),
                role: Role::Moderator,
                persona: Some(moderator.persona.clone()),
            });
        }
        let mut opening_labels = TurnLabels::default();
        opening_labels.extra.insert("model".into(), "hardcoded".into());
        let mut turns = vec![Turn {
            index: 0,
            original_id: None,
            speaker: plan.opening_speaker.clone(),
            role: Role::User,
            text: plan.topic.trim().to_string(),
            reply_to: None,
            labels: opening_labels,
        }];
        for turn in &self.turns {
            let mut labels = TurnLabels::default();
            labels.extra.insert("model".into(), turn.model.clone().into());
            labels.extra.insert("prompt_hash".into(), turn.prompt_hash.clone().into());
            labels.extra.insert("finish_reason".into(), turn.finish_reason.clone().into());
            if turn.is_empty() {
                labels.extra.insert("empty".into(), true.into());
            }
            turns.push(Turn {
                index: turn.index,
                original_id: None,
                speaker: turn.speaker.clone(),
                role: turn.role,
                text: turn.text.clone(),
                reply_to: None,
                labels,
            });
        }
        let mut meta = Meta::new();
        meta.insert("experiment".into(), experiment.into());
        meta.insert("topic".into(), plan.topic_name.clone().into());
        meta.insert("seed".into(), plan.seed.into());
        meta.insert("context_window".into(), plan.context_window.into());
        if let Ok(policy) = serde_json::to_value(&plan.turn_policy) {
            meta.insert("turn_policy".into(), policy);
        }
        Conversation {
            id: format!("{}:{}", corpus_name(experiment), plan.id),
            source: Source { corpus: corpus_name(experiment), original_id: plan.id.clone() },
            participants,
            turns,
            meta,
        }
    }
}

/// The store corpus holding an experiment's discussions.
pub fn corpus_name(experiment: &str) -> String {
    format!("sim-{experiment}")
}
