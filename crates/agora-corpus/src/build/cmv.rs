//! r/changemyview threads to training data: SFT on delta-winning comments, DPO pairs
//! (delta winner against a sampled non-winning reply) and KTO examples.
//!
//! The prompt for a comment is the thread path from the post down to its parent: the
//! post (title, blank line, text) as the first user message, then every comment on the
//! way. Turns by the comment's own author are the assistant; everyone else is the user.

use std::collections::HashSet;

use agora_core::{Conversation, Message, ReplyTree, Role, SplitMix64, Turn};
use serde_json::Value;

use super::{BuildStats, ChatExample, KtoExample, PreferenceExample, meta_from, push_merged};

/// How CMV threads become training examples.
#[derive(Debug, Clone, PartialEq)]
pub struct CmvBuildConfig {
    /// A system message put before every prompt.
    pub system_prompt: Option<String>,
    /// Use deltas given by anyone, not only by the original poster.
    pub any_giver: bool,
    /// Use only deltas DeltaBot confirmed.
    pub require_confirmed: bool,
    /// DPO: how many distinct rejected replies to pair with each delta winner.
    pub negatives_per_positive: usize,
    /// KTO: how many undesirable (non-delta) comments to sample per desirable one.
    pub kto_negatives_per_positive: usize,
    /// Targets and negatives with fewer characters (after trimming) are left out.
    pub min_chars: usize,
}

impl Default for CmvBuildConfig {
    fn default() -> CmvBuildConfig {
        CmvBuildConfig {
            system_prompt: None,
            any_giver: false,
            require_confirmed: false,
            negatives_per_positive: 1,
            kto_negatives_per_positive: 1,
            min_chars: 0,
        }
    }
}

/// Authors whose comments are bookkeeping, never arguments.
const BOT_AUTHORS: [&str; 2] = ["deltabot", "automoderator"];

/// Whether a comment was deleted or removed: its text or author replaced by Reddit, or
/// the importer's `deleted` label.
pub fn is_deleted(turn: &Turn) -> bool {
    let text = turn.text.trim();
    text == "[deleted]"
        || text == "[removed]"
        || turn.speaker == "[deleted]"
        || turn.labels.extra.get("deleted") == Some(&Value::Bool(true))
}

/// Whether a comment comes from a moderator or a bot (DeltaBot, AutoModerator).
pub fn is_moderator(turn: &Turn) -> bool {
    turn.role == Role::Moderator || BOT_AUTHORS.iter().any(|bot| turn.speaker.eq_ignore_ascii_case(bot))
}

/// SFT examples: one per delta-winning comment, the thread path as context and the
/// comment as the final assistant message.
pub fn sft_examples(
    conversation: &Conversation,
    config: &CmvBuildConfig,
    stats: &mut BuildStats,
) -> Vec<ChatExample> {
    stats.conversations += 1;
    let thread = Thread::new(conversation);
    let mut examples = Vec::new();
    for target in thread.delta_targets(config, stats) {
        let Some(turn) = conversation.turn(target) else {
            continue;
        };
        let mut messages = thread.context(target, config, stats);
        push_merged(&mut messages, Message::assistant(turn.text.trim()));
        let mut meta = thread.turn_meta("", turn);
        add_delta_meta(&mut meta, turn);
        examples.push(ChatExample { group: conversation.id.clone(), messages, meta });
    }
    stats.examples += examples.len() as u64;
    examples
}

/// DPO pairs: for each delta winner, `negatives_per_positive` distinct rejected replies
/// sampled with `rng`, siblings first (same parent), then top-level comments.
pub fn dpo_examples(
    conversation: &Conversation,
    config: &CmvBuildConfig,
    rng: &mut SplitMix64,
    stats: &mut BuildStats,
) -> Vec<PreferenceExample> {
    stats.conversations += 1;
    let thread = Thread::new(conversation);
    let mut examples = Vec::new();
    for target in thread.delta_targets(config, stats) {
        let Some(chosen_turn) = conversation.turn(target) else {
            continue;
        };
        let negatives =
            thread.sample_negatives(target, config, config.negatives_per_positive, &HashSet::new(), rng);
        note_shortfall(stats, "dpo", negatives.len(), config.negatives_per_positive);
        if negatives.is_empty() {
            continue;
        }
        let prompt = thread.context(target, config, stats);
        for (rejected, source) in negatives {
            let Some(rejected_turn) = conversation.turn(rejected) else {
                continue;
            };
            let mut meta = thread.turn_meta("chosen_", chosen_turn);
            meta.extend(thread.turn_meta("rejected_", rejected_turn));
            meta.insert("negative_source".into(), Value::from(source.name()));
            add_delta_meta(&mut meta, chosen_turn);
            examples.push(PreferenceExample {
                group: conversation.id.clone(),
                prompt: prompt.clone(),
                chosen: Message::assistant(chosen_turn.text.trim()),
                rejected: Message::assistant(rejected_turn.text.trim()),
                meta,
            });
        }
    }
    stats.examples += examples.len() as u64;
    examples
}

/// KTO examples: every delta winner labelled desirable, and for each one
/// `kto_negatives_per_positive` sampled non-delta comments labelled undesirable, each
/// with the prompt of its own thread path. A comment is used as a negative at most once.
pub fn kto_examples(
    conversation: &Conversation,
    config: &CmvBuildConfig,
    rng: &mut SplitMix64,
    stats: &mut BuildStats,
) -> Vec<KtoExample> {
    stats.conversations += 1;
    let thread = Thread::new(conversation);
    let mut examples = Vec::new();
    let mut used_negatives = HashSet::new();
    for target in thread.delta_targets(config, stats) {
        let Some(turn) = conversation.turn(target) else {
            continue;
        };
        let mut meta = thread.turn_meta("", turn);
        meta.insert("label_source".into(), Value::from("delta"));
        add_delta_meta(&mut meta, turn);
        examples.push(KtoExample {
            group: conversation.id.clone(),
            prompt: thread.context(target, config, stats),
            completion: Message::assistant(turn.text.trim()),
            label: true,
            meta,
        });
        let negatives =
            thread.sample_negatives(target, config, config.kto_negatives_per_positive, &used_negatives, rng);
        note_shortfall(stats, "kto", negatives.len(), config.kto_negatives_per_positive);
        for (negative, source) in negatives {
            let Some(negative_turn) = conversation.turn(negative) else {
                continue;
            };
            used_negatives.insert(negative);
            let mut meta = thread.turn_meta("", negative_turn);
            meta.insert("label_source".into(), Value::from(source.name()));
            meta.insert("paired_with_turn_index".into(), Value::from(target));
            examples.push(KtoExample {
                group: conversation.id.clone(),
                prompt: thread.context(negative, config, stats),
                completion: Message::assistant(negative_turn.text.trim()),
                label: false,
                meta,
            });
        }
    }
    stats.examples += examples.len() as u64;
    examples
}

fn note_shortfall(stats: &mut BuildStats, kind: &str, found: usize, wanted: usize) {
    if found == 0 && wanted > 0 {
        stats.note(format!("{kind}: delta winners without any eligible negative"), 1);
    } else if found < wanted {
        stats.note(format!("{kind}: delta winners with fewer negatives than requested"), 1);
    }
}

fn add_delta_meta(meta: &mut agora_core::Meta, turn: &Turn) {
    if let Some(delta) = &turn.labels.delta {
        meta.insert("delta_giver".into(), Value::from(delta.giver.clone()));
        meta.insert("delta_confirmed".into(), Value::from(delta.confirmed));
        meta.insert("delta_by_op".into(), Value::from(delta.by_op));
    }
}

/// Where a sampled negative came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NegativeSource {
    /// A reply to the same parent as the delta winner.
    Sibling,
    /// A reply to the post, used when siblings run out.
    TopLevel,
}

impl NegativeSource {
    fn name(self) -> &'static str {
        match self {
            NegativeSource::Sibling => "sibling",
            NegativeSource::TopLevel => "top_level",
        }
    }
}

/// A conversation with its reply tree and original poster, built once per thread.
struct Thread<'a> {
    conversation: &'a Conversation,
    tree: ReplyTree,
    original_poster: &'a str,
}

impl<'a> Thread<'a> {
    fn new(conversation: &'a Conversation) -> Thread<'a> {
        let original_poster = conversation.turns.first().map_or("", |post| post.speaker.as_str());
        Thread { conversation, tree: ReplyTree::new(conversation), original_poster }
    }

    /// Indices of the comments that won a usable delta, each counted when left out.
    fn delta_targets(&self, config: &CmvBuildConfig, stats: &mut BuildStats) -> Vec<u32> {
        let mut targets = Vec::new();
        for turn in &self.conversation.turns {
            let Some(delta) = &turn.labels.delta else {
                continue;
            };
            stats.note("delta winners seen", 1);
            let reason = if !delta.by_op && !config.any_giver {
                Some("delta winners skipped: delta not given by OP")
            } else if config.require_confirmed && !delta.confirmed {
                Some("delta winners skipped: delta not confirmed by DeltaBot")
            } else if turn.index == 0 {
                Some("delta winners skipped: the post itself")
            } else if is_deleted(turn) {
                Some("delta winners skipped: deleted or removed")
            } else if turn.speaker == self.original_poster {
                Some("delta winners skipped: written by OP")
            } else if turn.text.trim().chars().count() < config.min_chars.max(1) {
                Some("delta winners skipped: empty or shorter than min_chars")
            } else {
                None
            };
            match reason {
                Some(reason) => stats.note(reason, 1),
                None => targets.push(turn.index),
            }
        }
        targets
    }

    /// The first user message: the post's title, a blank line, and its text (the title
    /// alone when the text is empty or was deleted).
    fn post_text(&self) -> String {
        let title = self.conversation.meta.get("title").and_then(Value::as_str).unwrap_or("").trim();
        let body = self.conversation.turns.first().map_or("", |post| post.text.trim());
        let body = if body == "[deleted]" || body == "[removed]" { "" } else { body };
        match (title.is_empty(), body.is_empty()) {
            (false, false) => format!("{title}\n\n{body}"),
            (false, true) => title.to_string(),
            (true, _) => body.to_string(),
        }
    }

    /// The prompt for `target`: the optional system prompt, then the path from the post
    /// down to the target's parent, with the target author's turns as the assistant.
    fn context(&self, target: u32, config: &CmvBuildConfig, stats: &mut BuildStats) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(system_prompt) = &config.system_prompt {
            messages.push(Message::system(system_prompt.clone()));
        }
        let author = self.conversation.turn(target).map_or("", |turn| turn.speaker.as_str());
        let path = self.tree.path_to(target);
        for &index in path.iter().take(path.len().saturating_sub(1)) {
            let Some(turn) = self.conversation.turn(index) else {
                continue;
            };
            if index == 0 {
                push_merged(&mut messages, Message::user(self.post_text()));
                continue;
            }
            if is_deleted(turn) {
                stats.note("deleted comments kept in a prompt", 1);
            }
            let message = if turn.speaker == author {
                Message::assistant(turn.text.trim())
            } else {
                Message::user(turn.text.trim())
            };
            push_merged(&mut messages, message);
        }
        messages
    }

    /// Whether `turn` may serve as a non-delta reply contrasted with `chosen` (the caller
    /// also excludes the comments on `chosen`'s path, which are in its prompt).
    fn is_eligible_negative(&self, turn: &Turn, chosen: &Turn, config: &CmvBuildConfig) -> bool {
        let text = turn.text.trim();
        turn.index != 0
            && turn.index != chosen.index
            && turn.speaker != self.original_poster
            && !is_deleted(turn)
            && !is_moderator(turn)
            && turn.labels.delta.is_none()
            && !turn.labels.gives_delta
            && text != chosen.text.trim()
            && text.chars().count() >= config.min_chars.max(1)
    }

    /// Up to `count` distinct negatives for `target`, never one in `exclude`: shuffled
    /// siblings first, then shuffled top-level comments.
    fn sample_negatives(
        &self,
        target: u32,
        config: &CmvBuildConfig,
        count: usize,
        exclude: &HashSet<u32>,
        rng: &mut SplitMix64,
    ) -> Vec<(u32, NegativeSource)> {
        let Some(chosen) = self.conversation.turn(target) else {
            return Vec::new();
        };
        // Comments on the target's own path are in its prompt: never a negative.
        let on_path: HashSet<u32> = self.tree.path_to(target).into_iter().collect();
        let excluded = |index: &u32| exclude.contains(index) || on_path.contains(index);
        let eligible = |index: &u32| {
            !excluded(index)
                && self
                    .conversation
                    .turn(*index)
                    .is_some_and(|turn| self.is_eligible_negative(turn, chosen, config))
        };
        let parent = self.tree.parent(target).unwrap_or(0);
        let mut siblings: Vec<u32> = self.tree.children(parent).iter().copied().filter(eligible).collect();
        rng.shuffle(&mut siblings);
        let mut picked: Vec<(u32, NegativeSource)> =
            siblings.into_iter().take(count).map(|index| (index, NegativeSource::Sibling)).collect();
        if picked.len() < count && parent != 0 {
            let mut top_level: Vec<u32> = self
                .tree
                .children(0)
                .iter()
                .copied()
                .filter(|index| eligible(index) && !picked.iter().any(|(taken, _)| taken == index))
                .collect();
            rng.shuffle(&mut top_level);
            let missing = count - picked.len();
            picked.extend(top_level.into_iter().take(missing).map(|index| (index, NegativeSource::TopLevel)));
        }
        picked
    }

    /// `turn_index` and `original_id` of a turn (with a prefix), and the conversation id.
    fn turn_meta(&self, prefix: &str, turn: &Turn) -> agora_core::Meta {
        let original_id = turn.original_id.clone().map_or(Value::Null, Value::from);
        let mut meta = meta_from([("conversation_id", Value::from(self.conversation.id.clone()))]);
        meta.insert(format!("{prefix}turn_index"), Value::from(turn.index));
        meta.insert(format!("{prefix}original_id"), original_id);
        meta
    }
}
