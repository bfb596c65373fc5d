//! End-to-end tests of the exports: builders on hand-made CMV, ESConv and Persona-Chat
//! conversations, the TRL and ConvoKit files they give (compared with the checked-in
//! snapshots in test_data/export/samples), Parquet round trips and leak-free splits.
//!
//! `UPDATE_EXPECT=1 cargo test -p agora-corpus --test export` rewrites the snapshots;
//! `AGORA_EXPORT_SAMPLES=DIR` also writes the sample set into DIR, for the Python checks
//! that load it with TRL, datasets and ConvoKit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use agora_core::{
    ChatRole, Conversation, Delta, Message, Meta, Participant, Persona, Role, Source, SplitMix64, Strategy,
    Turn, TurnLabels,
};
use agora_corpus::build::cmv::{self, CmvBuildConfig};
use agora_corpus::build::esconv::{self, EsconvBuildConfig};
use agora_corpus::build::personachat::{self, PersonaBuildConfig};
use agora_corpus::build::split::{SplitName, SplitSpec};
use agora_corpus::build::{BuildStats, ChatExample, KtoExample, PreferenceExample};
use agora_corpus::convokit::ConvokitWriter;
use agora_corpus::parquet_export::{ParquetExampleWriter, ParquetTurnWriter};
use agora_corpus::trl::{TrlLayout, TrlWriter};
use arrow_array::{Array, BooleanArray, RecordBatch, StringArray, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Hand-made conversations, filled the way the importers fill them.

mod fixtures {
    use super::*;

    pub fn turn(index: u32, speaker: &str, role: Role, text: &str, reply_to: Option<u32>) -> Turn {
        Turn {
            index,
            original_id: None,
            speaker: speaker.to_string(),
            role,
            text: text.to_string(),
            reply_to,
            labels: TurnLabels::default(),
        }
    }

    fn delta(giver: &str, receiver: &str, given_in: u32, confirmed: bool, by_op: bool) -> Delta {
        Delta { giver: giver.into(), receiver: receiver.into(), given_in, confirmed, by_op }
    }

    /// A CMV thread (tree):
    ///
    /// ```text
    /// 0 post (op_user)
    /// ├── 1 alice        delta by OP (given in 2, confirmed by DeltaBot in 3)
    /// │   └── 2 op_user  "∆"
    /// │       └── 3 DeltaBot
    /// ├── 4 bob
    /// ├── 5 carol        [deleted]
    /// ├── 6 dave
    /// │   └── 7 op_user
    /// │       ├── 8 dave       delta by OP (given in 10, unconfirmed)
    /// │       │   └── 10 op_user "!delta"
    /// │       ├── 9 erin
    /// │       ├── 11 AutoModerator
    /// │       └── 12 frank     same text as 8
    /// ├── 13 [deleted]   [removed], with a delta by OP (must be skipped)
    /// └── 14 hank        delta given by ivan, not OP
    ///     └── 15 ivan    "∆"
    /// ```
    pub fn cmv_thread() -> Conversation {
        use Role::{Assistant, Moderator, User};
        let mut turns = vec![
            turn(0, "op_user", User, "Cats are independent, clean and quiet.", None),
            turn(1, "alice", Assistant, "Dogs are loyal in a way cats are not. Café owners agree.", Some(0)),
            turn(2, "op_user", User, "Good point ∆ I had not thought of loyalty.", Some(1)),
            turn(3, "DeltaBot", Moderator, "Confirmed: 1 delta awarded to /u/alice", Some(2)),
            turn(4, "bob", Assistant, "Dogs need walks, which keeps you fit.", Some(0)),
            turn(5, "carol", Assistant, "[deleted]", Some(0)),
            turn(6, "dave", Assistant, "Cats kill birds.", Some(0)),
            turn(7, "op_user", User, "Not if they stay indoors?", Some(6)),
            turn(8, "dave", Assistant, "Indoor cats still escape and hunt.", Some(7)),
            turn(9, "erin", Assistant, "Indoor cats get bored.", Some(7)),
            turn(10, "op_user", User, "!delta you convinced me", Some(8)),
            turn(11, "AutoModerator", Moderator, "Please be civil.", Some(7)),
            turn(12, "frank", Assistant, "Indoor cats still escape and hunt.", Some(7)),
            turn(13, "[deleted]", Assistant, "[removed]", Some(0)),
            turn(14, "hank", Assistant, "Dogs can be trained to help people.", Some(0)),
            turn(15, "ivan", Assistant, "∆ this changed my mind", Some(14)),
        ];
        for turn in &mut turns {
            turn.original_id = Some(format!("c{}", turn.index));
        }
        turns[0].original_id = Some("abc123".into());
        turns[1].labels.delta = Some(delta("op_user", "alice", 2, true, true));
        turns[2].labels.gives_delta = true;
        turns[8].labels.delta = Some(delta("op_user", "dave", 10, false, true));
        turns[10].labels.gives_delta = true;
        turns[13].labels.delta = Some(delta("op_user", "[deleted]", 0, false, true));
        turns[14].labels.delta = Some(delta("ivan", "hank", 15, false, false));
        turns[15].labels.gives_delta = true;
        turns[4].labels.extra.insert("score".into(), Value::from(12));
        let mut meta = Meta::new();
        meta.insert("title".into(), Value::from("CMV: Cats are better pets than dogs"));
        Conversation {
            id: "cmv:abc123".into(),
            source: Source { corpus: "cmv".into(), original_id: "abc123".into() },
            participants: vec![],
            turns,
            meta,
        }
    }

    /// An ESConv dialogue: seeker = user, supporter = assistant with strategies.
    pub fn esconv_dialogue() -> Conversation {
        use Role::{Assistant, User};
        let mut turns = vec![
            turn(0, "supporter", Assistant, "Hello, how are you today?", None),
            turn(1, "seeker", User, "I'm worried about losing my job.", None),
            turn(2, "supporter", Assistant, "That sounds really stressful.", None),
            turn(3, "supporter", Assistant, "What is happening at work?", None),
            turn(4, "seeker", User, "My company is cutting staff.", None),
            turn(5, "supporter", Assistant, "I went through layoffs once, and it got better.", None),
            turn(6, "supporter", Assistant, "ok", None),
        ];
        turns[0].labels.strategy = Some(Strategy::Question);
        turns[2].labels.strategy = Some(Strategy::ReflectionOfFeelings);
        turns[3].labels.strategy = Some(Strategy::Question);
        turns[4].labels.feedback = Some("5".into());
        turns[5].labels.strategy = Some(Strategy::SelfDisclosure);
        let mut meta = Meta::new();
        meta.insert("situation".into(), Value::from("My company announced layoffs."));
        meta.insert("emotion_type".into(), Value::from("anxiety"));
        meta.insert("problem_type".into(), Value::from("job crisis"));
        Conversation {
            id: "esconv:0".into(),
            source: Source { corpus: "esconv".into(), original_id: "0".into() },
            participants: vec![
                Participant { name: "supporter".into(), role: Role::Assistant, persona: None },
                Participant { name: "seeker".into(), role: Role::User, persona: None },
            ],
            turns,
            meta,
        }
    }

    /// A Persona-Chat dialogue: "partner" (user) speaks first, "self" (assistant) answers.
    pub fn persona_dialogue() -> Conversation {
        use Role::{Assistant, User};
        let persona = |name: &str, facts: &[&str]| Persona {
            name: name.into(),
            facts: facts.iter().map(|fact| fact.to_string()).collect(),
            ..Persona::default()
        };
        Conversation {
            id: "personachat:train:0".into(),
            source: Source { corpus: "personachat".into(), original_id: "train:0".into() },
            participants: vec![
                Participant {
                    name: "partner".into(),
                    role: User,
                    persona: Some(persona("partner", &["i love to cook.", "i have two cats."])),
                },
                Participant {
                    name: "self".into(),
                    role: Assistant,
                    persona: Some(persona(
                        "self",
                        &["i read twenty books a year.", "i go to the gym daily."],
                    )),
                },
            ],
            turns: vec![
                turn(0, "partner", User, "hi, how are you?", None),
                turn(1, "self", Assistant, "great, i just got back from the gym.", None),
                turn(2, "partner", User, "nice. i love to cook, what do you like?", None),
                turn(3, "self", Assistant, "i read twenty books a year.", None),
                turn(4, "partner", User, "i prefer movies.", None),
            ],
            meta: Meta::new(),
        }
    }

    /// A CMV-like thread with a given id, for split tests.
    pub fn small_thread(number: usize) -> Conversation {
        let mut conversation = cmv_thread();
        conversation.id = format!("cmv:post{number}");
        conversation.source.original_id = format!("post{number}");
        conversation.meta.insert("title".into(), Value::from(format!("CMV: claim number {number}")));
        conversation
    }
}

use fixtures::{cmv_thread, esconv_dialogue, persona_dialogue};

fn roles_and_contents(messages: &[Message]) -> Vec<(ChatRole, String)> {
    messages.iter().map(|message| (message.role, message.content.clone())).collect()
}

fn expected(messages: &[(ChatRole, &str)]) -> Vec<(ChatRole, String)> {
    messages.iter().map(|(role, content)| (*role, content.to_string())).collect()
}

const POST: &str = "CMV: Cats are better pets than dogs\n\nCats are independent, clean and quiet.";

// ---------------------------------------------------------------------------------------
// CMV builders

fn check_sft(
    config: &CmvBuildConfig,
    expected_examples: &[Vec<(ChatRole, &str)>],
    expected_counts: &[(&str, u64)],
) {
    let mut stats = BuildStats::default();
    let examples = cmv::sft_examples(&cmv_thread(), config, &mut stats);
    let got: Vec<_> = examples.iter().map(|example| roles_and_contents(&example.messages)).collect();
    let want: Vec<_> = expected_examples.iter().map(|messages| expected(messages)).collect();
    assert_eq!(got, want);
    assert!(examples.iter().all(|example| example.group == "cmv:abc123"));
    assert_eq!(stats.examples, examples.len() as u64);
    for (key, count) in expected_counts {
        assert_eq!(stats.count(key), *count, "{key}\n{stats}");
    }
}

#[test]
fn cmv_sft_follows_the_thread_path() {
    use ChatRole::{Assistant, System, User};
    check_sft(
        &CmvBuildConfig::default(),
        &[
            vec![(User, POST), (Assistant, "Dogs are loyal in a way cats are not. Café owners agree.")],
            vec![
                (User, POST),
                (Assistant, "Cats kill birds."),
                (User, "Not if they stay indoors?"),
                (Assistant, "Indoor cats still escape and hunt."),
            ],
        ],
        &[
            ("delta winners seen", 4),
            ("delta winners skipped: deleted or removed", 1),
            ("delta winners skipped: delta not given by OP", 1),
        ],
    );
    let config = CmvBuildConfig {
        system_prompt: Some("Change the poster's view.".into()),
        any_giver: true,
        require_confirmed: false,
        ..CmvBuildConfig::default()
    };
    let with_system = |messages: Vec<(ChatRole, &'static str)>| {
        let mut all = vec![(System, "Change the poster's view.")];
        all.extend(messages);
        all
    };
    check_sft(
        &config,
        &[
            with_system(vec![
                (User, POST),
                (Assistant, "Dogs are loyal in a way cats are not. Café owners agree."),
            ]),
            with_system(vec![
                (User, POST),
                (Assistant, "Cats kill birds."),
                (User, "Not if they stay indoors?"),
                (Assistant, "Indoor cats still escape and hunt."),
            ]),
            with_system(vec![(User, POST), (Assistant, "Dogs can be trained to help people.")]),
        ],
        &[("delta winners skipped: delta not given by OP", 0)],
    );
    let confirmed_only = CmvBuildConfig { require_confirmed: true, ..CmvBuildConfig::default() };
    check_sft(
        &confirmed_only,
        &[vec![(User, POST), (Assistant, "Dogs are loyal in a way cats are not. Café owners agree.")]],
        &[("delta winners skipped: delta not confirmed by DeltaBot", 2)],
    );
    let long_only = CmvBuildConfig { min_chars: 40, ..CmvBuildConfig::default() };
    check_sft(
        &long_only,
        &[vec![(User, POST), (Assistant, "Dogs are loyal in a way cats are not. Café owners agree.")]],
        &[("delta winners skipped: empty or shorter than min_chars", 1)],
    );
}

#[test]
fn cmv_sft_merges_consecutive_roles_and_titles_deleted_posts() {
    let mut conversation = cmv_thread();
    conversation.turns[0].text = "[deleted]".into();
    let mut stats = BuildStats::default();
    let examples = cmv::sft_examples(&conversation, &CmvBuildConfig::default(), &mut stats);
    assert_eq!(examples[0].messages[0], Message::user("CMV: Cats are better pets than dogs"));

    let mut conversation = cmv_thread();
    // 6 is now by a third person, so 6 and 7 are both "user" for dave's reply 8 and merge.
    conversation.turns[6].speaker = "zed".into();
    let examples = cmv::sft_examples(&conversation, &CmvBuildConfig::default(), &mut stats);
    assert_eq!(
        roles_and_contents(&examples[1].messages),
        expected(&[
            (ChatRole::User, &format!("{POST}\n\nCats kill birds.\n\nNot if they stay indoors?")),
            (ChatRole::Assistant, "Indoor cats still escape and hunt."),
        ])
    );
}

/// Every property a DPO negative must have, checked on the source conversation.
fn assert_valid_negative(conversation: &Conversation, example: &PreferenceExample) {
    let index = example.meta["rejected_turn_index"].as_u64().unwrap() as usize;
    let chosen_index = example.meta["chosen_turn_index"].as_u64().unwrap() as usize;
    let rejected = &conversation.turns[index];
    let chosen = &conversation.turns[chosen_index];
    assert!(rejected.labels.delta.is_none(), "negative {index} won a delta");
    assert!(!rejected.labels.gives_delta, "negative {index} gives a delta");
    assert_ne!(rejected.speaker, conversation.turns[0].speaker, "negative {index} is by OP");
    assert!(!cmv::is_deleted(rejected), "negative {index} is deleted");
    assert!(!cmv::is_moderator(rejected), "negative {index} is a moderator");
    assert_ne!(rejected.text.trim(), chosen.text.trim());
    let mut ancestor = chosen.reply_to;
    while let Some(parent) = ancestor {
        assert_ne!(parent as usize, index, "negative {index} is in the chosen reply's prompt");
        ancestor = conversation.turns[parent as usize].reply_to;
    }
    assert_eq!(example.rejected, Message::assistant(rejected.text.trim()));
    assert_eq!(example.chosen, Message::assistant(chosen.text.trim()));
    let source = example.meta["negative_source"].as_str().unwrap();
    match source {
        "sibling" => assert_eq!(rejected.reply_to, chosen.reply_to),
        "top_level" => assert_eq!(rejected.reply_to, Some(0)),
        other => panic!("unknown negative source {other}"),
    }
}

#[test]
fn cmv_dpo_negatives_are_never_winners_op_deleted_or_moderators() {
    let conversation = cmv_thread();
    let config = CmvBuildConfig { negatives_per_positive: 3, ..CmvBuildConfig::default() };
    let mut rejected_seen: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
    for seed in 0..200 {
        let mut stats = BuildStats::default();
        let examples = cmv::dpo_examples(&conversation, &config, &mut SplitMix64::new(seed), &mut stats);
        for example in &examples {
            assert_valid_negative(&conversation, example);
            let chosen = example.meta["chosen_turn_index"].as_u64().unwrap();
            rejected_seen
                .entry(chosen)
                .or_default()
                .insert(example.meta["rejected_turn_index"].as_u64().unwrap());
        }
        // alice (1) has two eligible top-level siblings (bob 4, dave 6); dave's reply 8 has
        // erin (9) as its only sibling, then top-level bob (dave's own 6 is in its prompt).
        assert_eq!(examples.len(), 4, "seed {seed}");
        assert_eq!(stats.count("dpo: delta winners with fewer negatives than requested"), 2);
        let rejected_for_8: HashSet<_> = examples
            .iter()
            .filter(|e| e.meta["chosen_turn_index"] == 8)
            .map(|e| e.meta["rejected_turn_index"].as_u64().unwrap())
            .collect();
        assert_eq!(rejected_for_8, HashSet::from([9, 4]), "negatives are distinct");
    }
    assert_eq!(rejected_seen[&1], HashSet::from([4, 6]));
}

#[test]
fn cmv_dpo_prefers_siblings_and_is_reproducible_per_seed() {
    let conversation = cmv_thread();
    let config = CmvBuildConfig::default();
    let run = |seed: u64| {
        let mut stats = BuildStats::default();
        cmv::dpo_examples(&conversation, &config, &mut SplitMix64::new(seed), &mut stats)
    };
    for seed in 0..20 {
        let examples = run(seed);
        assert_eq!(examples, run(seed));
        let for_8: Vec<_> = examples.iter().filter(|e| e.meta["chosen_turn_index"] == 8).collect();
        assert_eq!(for_8.len(), 1);
        assert_eq!(for_8[0].meta["rejected_turn_index"], 9, "the only sibling comes first");
        assert_eq!(for_8[0].meta["negative_source"], "sibling");
        // The prompt is the path above dave's reply, with dave's own turn as the assistant.
        assert_eq!(
            roles_and_contents(&for_8[0].prompt),
            expected(&[
                (ChatRole::User, POST),
                (ChatRole::Assistant, "Cats kill birds."),
                (ChatRole::User, "Not if they stay indoors?"),
            ])
        );
        assert_eq!(for_8[0].meta["chosen_original_id"], "c8");
        assert_eq!(for_8[0].meta["rejected_original_id"], "c9");
    }
    let first_choices: HashSet<_> =
        (0..50).map(|seed| run(seed)[0].meta["rejected_turn_index"].clone()).collect();
    assert_eq!(first_choices.len(), 2, "different seeds pick different negatives");
}

#[test]
fn cmv_dpo_counts_winners_without_negatives() {
    let mut conversation = cmv_thread();
    // Leave only the winners, OP, bots and deleted comments.
    conversation.turns.retain(|turn| ![4, 6, 9, 12].contains(&turn.index));
    for (position, turn) in conversation.turns.iter_mut().enumerate() {
        turn.index = position as u32;
    }
    // Re-point reply_to after the removal: 7's parent (6) is gone, so 7 becomes a top-level reply.
    let parents: Vec<Option<u32>> = vec![
        None,
        Some(0),
        Some(1),
        Some(2),
        Some(0),
        Some(0),
        Some(5),
        Some(6),
        Some(5),
        Some(0),
        Some(0),
        Some(10),
    ];
    for (turn, parent) in conversation.turns.iter_mut().zip(parents) {
        turn.reply_to = parent;
    }
    let mut stats = BuildStats::default();
    let examples =
        cmv::dpo_examples(&conversation, &CmvBuildConfig::default(), &mut SplitMix64::new(1), &mut stats);
    assert!(examples.is_empty(), "{examples:?}");
    assert_eq!(stats.count("dpo: delta winners without any eligible negative"), 2, "{stats}");
}

#[test]
fn cmv_kto_labels_winners_and_samples_each_negative_once() {
    let conversation = cmv_thread();
    let config = CmvBuildConfig { kto_negatives_per_positive: 2, ..CmvBuildConfig::default() };
    for seed in 0..50 {
        let mut stats = BuildStats::default();
        let examples: Vec<KtoExample> =
            cmv::kto_examples(&conversation, &config, &mut SplitMix64::new(seed), &mut stats);
        let positives: Vec<_> =
            examples.iter().filter(|e| e.label).map(|e| e.meta["turn_index"].clone()).collect();
        assert_eq!(positives, vec![Value::from(1), Value::from(8)]);
        let negatives: Vec<u64> =
            examples.iter().filter(|e| !e.label).map(|e| e.meta["turn_index"].as_u64().unwrap()).collect();
        let distinct: HashSet<_> = negatives.iter().collect();
        assert_eq!(distinct.len(), negatives.len(), "seed {seed}: a negative used twice");
        // alice takes both top-level negatives (bob, dave); dave's reply 8 then has only
        // its sibling erin left.
        assert_eq!(negatives.len(), 3, "seed {seed}");
        assert_eq!(stats.count("kto: delta winners with fewer negatives than requested"), 1);
        for example in examples.iter().filter(|e| !e.label) {
            let index = example.meta["turn_index"].as_u64().unwrap() as usize;
            let turn = &conversation.turns[index];
            assert!(turn.labels.delta.is_none() && !cmv::is_deleted(turn) && turn.speaker != "op_user");
            // The negative's own path is its prompt, with its own author as the assistant.
            let last = example.prompt.last().unwrap();
            let parent = &conversation.turns[turn.reply_to.unwrap() as usize];
            let parent_text = if parent.index == 0 { POST.to_string() } else { parent.text.clone() };
            assert!(last.content.ends_with(&parent_text), "{last:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// ESConv and Persona-Chat builders

fn check_chat_examples(examples: &[ChatExample], expected_examples: &[Vec<(ChatRole, &str)>]) {
    let got: Vec<_> = examples.iter().map(|example| roles_and_contents(&example.messages)).collect();
    let want: Vec<_> = expected_examples.iter().map(|messages| expected(messages)).collect();
    assert_eq!(got, want);
}

#[test]
fn esconv_strategy_examples() {
    use ChatRole::{Assistant, System, User};
    let mut stats = BuildStats::default();
    let config = EsconvBuildConfig { max_history: Some(3), ..EsconvBuildConfig::default() };
    let examples = esconv::strategy_examples(&esconv_dialogue(), &config, &mut stats);
    let system = |strategy: Strategy| {
        format!(
            "You are a supportive listener. Respond using the strategy: {} — {}\n\nThe seeker's situation: My company announced layoffs.",
            strategy.name(),
            strategy.description()
        )
    };
    let reflection = system(Strategy::ReflectionOfFeelings);
    let question = system(Strategy::Question);
    let disclosure = system(Strategy::SelfDisclosure);
    check_chat_examples(
        &examples,
        &[
            vec![
                (System, &reflection),
                (Assistant, "Hello, how are you today?"),
                (User, "I'm worried about losing my job."),
                (Assistant, "That sounds really stressful."),
            ],
            vec![
                (System, &question),
                (Assistant, "Hello, how are you today?"),
                (User, "I'm worried about losing my job."),
                (Assistant, "That sounds really stressful."),
                (Assistant, "What is happening at work?"),
            ],
            // max_history 3: turns 2, 3 (merged) and 4.
            vec![
                (System, &disclosure),
                (Assistant, "That sounds really stressful.\n\nWhat is happening at work?"),
                (User, "My company is cutting staff."),
                (Assistant, "I went through layoffs once, and it got better."),
            ],
        ],
    );
    assert_eq!(examples[2].meta["strategy"], "Self-disclosure");
    assert_eq!(examples[2].meta["emotion_type"], "anxiety");
    assert_eq!(stats.count("supporter turns skipped: first turn (no history)"), 1);
    assert_eq!(stats.count("supporter turns skipped: no strategy"), 1);

    let custom = EsconvBuildConfig {
        system_template: "Strategy: {strategy}".into(),
        include_situation: false,
        max_history: Some(1),
    };
    let examples = esconv::strategy_examples(&esconv_dialogue(), &custom, &mut stats);
    assert_eq!(examples[0].messages[0], Message::system("Strategy: Reflection of feelings"));
    assert_eq!(examples[0].messages.len(), 3);
}

#[test]
fn persona_examples_per_turn_and_per_dialogue() {
    use ChatRole::{Assistant, System, User};
    let persona = "Your persona:\n- i read twenty books a year.\n- i go to the gym daily.";
    let mut stats = BuildStats::default();
    let examples =
        personachat::persona_examples(&persona_dialogue(), &PersonaBuildConfig::default(), &mut stats);
    check_chat_examples(
        &examples,
        &[
            vec![
                (System, persona),
                (User, "hi, how are you?"),
                (Assistant, "great, i just got back from the gym."),
            ],
            vec![
                (System, persona),
                (User, "hi, how are you?"),
                (Assistant, "great, i just got back from the gym."),
                (User, "nice. i love to cook, what do you like?"),
                (Assistant, "i read twenty books a year."),
            ],
        ],
    );
    let whole = PersonaBuildConfig {
        one_per_dialogue: true,
        include_partner_persona: true,
        ..PersonaBuildConfig::default()
    };
    let examples = personachat::persona_examples(&persona_dialogue(), &whole, &mut stats);
    let both = format!("{persona}\n\nYour partner's persona:\n- i love to cook.\n- i have two cats.");
    check_chat_examples(
        &examples,
        &[vec![
            (System, &both),
            (User, "hi, how are you?"),
            (Assistant, "great, i just got back from the gym."),
            (User, "nice. i love to cook, what do you like?"),
            (Assistant, "i read twenty books a year."),
        ]],
    );
    assert_eq!(stats.count("trailing partner turns left out of whole-dialogue examples"), 1);
    let mut no_persona = persona_dialogue();
    no_persona.participants.clear();
    let examples = personachat::persona_examples(&no_persona, &PersonaBuildConfig::default(), &mut stats);
    assert_eq!(examples[0].messages[0].role, User);
    assert_eq!(stats.count("dialogues without self persona facts"), 1);
}

// ---------------------------------------------------------------------------------------
// The sample export set: TRL files and a ConvoKit folder, snapshot-compared.

/// The chat examples of every sample: CMV SFT, ESConv strategies, Persona-Chat turns.
fn sample_chat_examples() -> Vec<ChatExample> {
    let mut stats = BuildStats::default();
    let mut examples = cmv::sft_examples(&cmv_thread(), &CmvBuildConfig::default(), &mut stats);
    examples.extend(esconv::strategy_examples(&esconv_dialogue(), &EsconvBuildConfig::default(), &mut stats));
    examples.extend(personachat::persona_examples(
        &persona_dialogue(),
        &PersonaBuildConfig::default(),
        &mut stats,
    ));
    examples
}

fn sample_preferences() -> Vec<PreferenceExample> {
    let config = CmvBuildConfig { negatives_per_positive: 2, ..CmvBuildConfig::default() };
    cmv::dpo_examples(&cmv_thread(), &config, &mut SplitMix64::new(7), &mut BuildStats::default())
}

fn sample_kto() -> Vec<KtoExample> {
    cmv::kto_examples(
        &cmv_thread(),
        &CmvBuildConfig::default(),
        &mut SplitMix64::new(7),
        &mut BuildStats::default(),
    )
}

/// Writes the sample set into `dir`; returns the names of its text files.
fn write_sample_set(dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir).unwrap();
    let chats = sample_chat_examples();
    let mut names = Vec::new();
    let mut write_file = |name: &str, layout: TrlLayout, conversational: bool| {
        let mut writer = TrlWriter::create(&dir.join(name), layout, conversational).unwrap();
        let count = match layout {
            TrlLayout::Messages | TrlLayout::PromptCompletion => chats.len(),
            TrlLayout::Preference => sample_preferences().len(),
            TrlLayout::Unpaired => sample_kto().len(),
        };
        match layout {
            TrlLayout::Messages | TrlLayout::PromptCompletion => {
                chats.iter().for_each(|example| writer.write_chat(example).unwrap())
            }
            TrlLayout::Preference => {
                sample_preferences().iter().for_each(|e| writer.write_preference(e).unwrap())
            }
            TrlLayout::Unpaired => sample_kto().iter().for_each(|e| writer.write_kto(e).unwrap()),
        }
        assert_eq!(writer.finish().unwrap(), count as u64);
        names.push(name.to_string());
    };
    write_file("messages.jsonl", TrlLayout::Messages, true);
    write_file("text.jsonl", TrlLayout::Messages, false);
    write_file("prompt_completion.jsonl", TrlLayout::PromptCompletion, false);
    write_file("prompt_completion_conversational.jsonl", TrlLayout::PromptCompletion, true);
    write_file("preference.jsonl", TrlLayout::Preference, false);
    write_file("preference_conversational.jsonl", TrlLayout::Preference, true);
    write_file("kto.jsonl", TrlLayout::Unpaired, false);
    write_file("kto_conversational.jsonl", TrlLayout::Unpaired, true);

    let mut convokit = ConvokitWriter::new(&dir.join("convokit")).unwrap();
    for conversation in [cmv_thread(), esconv_dialogue(), persona_dialogue()] {
        convokit.write(&conversation).unwrap();
    }
    let summary = convokit.finish().unwrap();
    assert_eq!((summary.conversations, summary.utterances, summary.extra_roots), (3, 28, 0));
    for file in ["utterances.jsonl", "speakers.json", "conversations.json", "corpus.json", "index.json"] {
        names.push(format!("convokit/{file}"));
    }

    // Binary files for the Python checks; not snapshot-compared.
    let mut turns = ParquetTurnWriter::new(&dir.join("turns.parquet")).unwrap();
    for conversation in [cmv_thread(), esconv_dialogue(), persona_dialogue()] {
        turns.write(&conversation).unwrap();
    }
    assert_eq!(turns.finish().unwrap(), 28);
    let mut examples = ParquetExampleWriter::new(&dir.join("examples.parquet")).unwrap();
    chats.iter().for_each(|example| examples.write(example).unwrap());
    assert_eq!(examples.finish().unwrap(), chats.len() as u64);
    names
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/export/samples")
}

#[test]
fn sample_set_matches_the_snapshots() {
    let temp = tempfile::tempdir().unwrap();
    let names = write_sample_set(temp.path());
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    for name in &names {
        let got = fs::read_to_string(temp.path().join(name)).unwrap();
        let snapshot = snapshot_dir().join(name);
        if update {
            fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
            fs::write(&snapshot, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&snapshot)
            .unwrap_or_else(|error| panic!("{}: {error} (run with UPDATE_EXPECT=1)", snapshot.display()));
        assert_eq!(got, want, "{name} differs from its snapshot (UPDATE_EXPECT=1 rewrites it)");
    }
}

#[test]
fn sample_set_for_python_checks() {
    let Some(dir) = std::env::var_os("AGORA_EXPORT_SAMPLES") else {
        eprintln!("AGORA_EXPORT_SAMPLES is not set: not writing the sample set");
        return;
    };
    let names = write_sample_set(Path::new(&dir));
    eprintln!("wrote {} files and 2 parquet files to {}", names.len(), Path::new(&dir).display());
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn trl_records_have_exactly_the_documented_keys() {
    let temp = tempfile::tempdir().unwrap();
    write_sample_set(temp.path());
    let check = |name: &str, keys: &[&str], conversational: bool| {
        for record in read_jsonl(&temp.path().join(name)) {
            let object = record.as_object().unwrap();
            let got: Vec<&str> = object.keys().map(String::as_str).collect();
            assert_eq!(got, keys, "{name}: keys in the documented order");
            for key in keys.iter().filter(|key| **key != "label") {
                let value = &object[*key];
                if conversational {
                    let messages = value.as_array().unwrap();
                    assert!(!messages.is_empty());
                    for message in messages {
                        let role = message["role"].as_str().unwrap();
                        assert!(["system", "user", "assistant"].contains(&role), "{name}: {role}");
                        assert!(message["content"].is_string());
                    }
                } else {
                    assert!(value.is_string(), "{name}: {key}");
                }
            }
            if let Some(label) = object.get("label") {
                assert!(label.is_boolean());
            }
        }
    };
    check("messages.jsonl", &["messages"], true);
    check("text.jsonl", &["text"], false);
    check("prompt_completion.jsonl", &["prompt", "completion"], false);
    check("prompt_completion_conversational.jsonl", &["prompt", "completion"], true);
    check("preference.jsonl", &["prompt", "chosen", "rejected"], false);
    check("preference_conversational.jsonl", &["prompt", "chosen", "rejected"], true);
    check("kto.jsonl", &["prompt", "completion", "label"], false);
    check("kto_conversational.jsonl", &["prompt", "completion", "label"], true);
    // Non-ASCII text is written as UTF-8, not escaped.
    let raw = fs::read_to_string(temp.path().join("messages.jsonl")).unwrap();
    assert!(raw.contains("Café") && raw.contains('—'), "UTF-8 kept");
    assert!(!raw.contains("\\u"));
    // A standard prompt + completion is the flattened conversation.
    let flat = read_jsonl(&temp.path().join("text.jsonl"));
    let pairs = read_jsonl(&temp.path().join("prompt_completion.jsonl"));
    for (text, pair) in flat.iter().zip(&pairs) {
        let joined = format!("{}{}", pair["prompt"].as_str().unwrap(), pair["completion"].as_str().unwrap());
        assert_eq!(text["text"].as_str().unwrap(), joined);
    }
}

#[test]
fn convokit_folder_is_consistent() {
    let temp = tempfile::tempdir().unwrap();
    write_sample_set(temp.path());
    let dir = temp.path().join("convokit");
    let utterances = read_jsonl(&dir.join("utterances.jsonl"));
    let read =
        |name: &str| -> Value { serde_json::from_str(&fs::read_to_string(dir.join(name)).unwrap()).unwrap() };
    let (speakers, conversations, index) =
        (read("speakers.json"), read("conversations.json"), read("index.json"));
    let ids: HashMap<&str, &Value> = utterances.iter().map(|u| (u["id"].as_str().unwrap(), u)).collect();
    assert_eq!(ids.len(), utterances.len(), "utterance ids are unique");
    for utterance in &utterances {
        let keys: Vec<&str> = utterance.as_object().unwrap().keys().map(String::as_str).collect();
        // The order ConvoKit's own dump writes.
        assert_eq!(
            keys,
            ["id", "conversation_id", "text", "speaker", "meta", "reply-to", "timestamp", "vectors"]
        );
        let conversation_id = utterance["conversation_id"].as_str().unwrap();
        // ConvoKit's convention: the conversation id is its root utterance's id.
        let root = ids[conversation_id];
        assert!(root["reply-to"].is_null());
        match utterance["reply-to"].as_str() {
            Some(parent) => assert_eq!(ids[parent]["conversation_id"], conversation_id),
            None => assert_eq!(utterance["id"], conversation_id),
        }
        assert!(speakers[utterance["speaker"].as_str().unwrap()]["meta"].is_object());
        assert!(conversations[conversation_id]["meta"].is_object());
        // Every meta value's Python type is listed in the index.
        for (key, value) in utterance["meta"].as_object().unwrap() {
            let types = index["utterances-index"][key].as_array().unwrap();
            let python = match value {
                Value::Null => continue,
                Value::Bool(_) => "<class 'bool'>",
                Value::Number(number) if number.is_f64() => "<class 'float'>",
                Value::Number(_) => "<class 'int'>",
                Value::String(_) => "<class 'str'>",
                Value::Array(_) => "<class 'list'>",
                Value::Object(_) => "<class 'dict'>",
            };
            assert!(types.contains(&Value::from(python)), "{key}: {python} not in {types:?}");
        }
    }
    // Reddit user names are global; dialogue roles are scoped to their conversation.
    assert!(speakers.get("alice").is_some());
    assert!(speakers.get("esconv:0:seeker").is_some());
    assert_eq!(ids["cmv:abc123:8"]["reply-to"], "cmv:abc123:7");
    assert_eq!(ids["esconv:0:3"]["reply-to"], "esconv:0:2");
    assert_eq!(ids["cmv:abc123:8"]["meta"]["delta"]["giver"], "op_user");
    assert_eq!(ids["cmv:abc123:8"]["meta"]["delta"]["given_in_utterance"], "cmv:abc123:10");
    assert_eq!(
        speakers["personachat:train:0:self"]["meta"]["persona"]["facts"][0],
        "i read twenty books a year."
    );
    assert_eq!(ids["esconv:0:5"]["meta"]["strategy"], "Self-disclosure");
    assert_eq!(conversations["esconv:0"]["meta"]["emotion_type"], "anxiety");
    assert_eq!(index["version"], 1);
    assert_eq!(index["vectors"], Value::Array(vec![]));
}

#[test]
fn convokit_refuses_duplicate_and_empty_conversations() {
    let temp = tempfile::tempdir().unwrap();
    let mut writer = ConvokitWriter::new(temp.path()).unwrap();
    writer.write(&cmv_thread()).unwrap();
    let error = writer.write(&cmv_thread()).unwrap_err().to_string();
    assert!(error.contains("conversation cmv:abc123") && error.contains("written twice"), "{error}");
    let mut empty = esconv_dialogue();
    empty.turns.clear();
    assert!(writer.write(&empty).is_err());
}

// ---------------------------------------------------------------------------------------
// Parquet

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap().build().unwrap();
    reader.map(Result::unwrap).collect()
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
}

#[test]
fn parquet_turns_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("turns.parquet");
    let mut writer = ParquetTurnWriter::new(&path).unwrap();
    writer.write(&cmv_thread()).unwrap();
    writer.write(&esconv_dialogue()).unwrap();
    assert_eq!(writer.finish().unwrap(), 23);
    let batches = read_parquet(&path);
    let batch = &batches[0];
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 23);
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
    let compression = builder.metadata().row_group(0).column(0).compression();
    assert_eq!(compression, parquet::basic::Compression::SNAPPY);
    let ids = column::<StringArray>(batch, "conversation_id");
    let turn_index = column::<UInt32Array>(batch, "turn_index");
    let reply_to = column::<UInt32Array>(batch, "reply_to");
    let giver = column::<StringArray>(batch, "delta_giver");
    let confirmed = column::<BooleanArray>(batch, "delta_confirmed");
    let gives = column::<BooleanArray>(batch, "gives_delta");
    let strategy = column::<StringArray>(batch, "strategy");
    let labels = column::<StringArray>(batch, "labels_json");
    let original = column::<StringArray>(batch, "turn_original_id");
    let text = column::<StringArray>(batch, "text");
    assert_eq!(ids.value(0), "cmv:abc123");
    assert_eq!(text.value(1), "Dogs are loyal in a way cats are not. Café owners agree.");
    assert!(reply_to.is_null(0));
    assert_eq!(reply_to.value(8), 7);
    assert_eq!((giver.value(1), confirmed.value(1)), ("op_user", true));
    assert!(giver.is_null(4) && confirmed.is_null(4));
    assert!(gives.value(2) && !gives.value(1));
    assert_eq!(original.value(8), "c8");
    let delta: Value = serde_json::from_str(labels.value(1)).unwrap();
    assert_eq!(delta["delta"]["given_in"], 2);
    assert_eq!(labels.value(4), r#"{"extra":{"score":12}}"#);
    assert!(labels.is_null(6));
    // ESConv rows follow.
    assert_eq!(ids.value(16), "esconv:0");
    assert_eq!(turn_index.value(18), 2);
    assert_eq!(strategy.value(18), "Reflection of feelings");
    assert!(strategy.is_null(17) && original.is_null(17));
    assert_eq!(labels.value(20), r#"{"feedback":"5"}"#);
}

#[test]
fn parquet_flushes_in_bounded_batches() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("many.parquet");
    let mut long = esconv_dialogue();
    let template = long.turns[1].clone();
    long.turns = (0..20_000u32)
        .map(|index| Turn { index, text: format!("turn {index}"), ..template.clone() })
        .collect();
    let mut writer = ParquetTurnWriter::new(&path).unwrap();
    writer.write(&long).unwrap();
    assert_eq!(writer.finish().unwrap(), 20_000);
    let batches = read_parquet(&path);
    let rows: Vec<String> = batches
        .iter()
        .flat_map(|batch| {
            let text = column::<StringArray>(batch, "text");
            (0..text.len()).map(|row| text.value(row).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows.len(), 20_000);
    assert_eq!(rows[8_192], "turn 8192");
    assert_eq!(rows[19_999], "turn 19999");
}

#[test]
fn parquet_examples_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("examples.parquet");
    let examples = sample_chat_examples();
    let mut writer = ParquetExampleWriter::new(&path).unwrap();
    examples.iter().for_each(|example| writer.write(example).unwrap());
    writer.finish().unwrap();
    let batches = read_parquet(&path);
    let groups = column::<StringArray>(&batches[0], "group");
    let messages = column::<StringArray>(&batches[0], "messages_json");
    assert_eq!(groups.len(), examples.len());
    for (row, example) in examples.iter().enumerate() {
        assert_eq!(groups.value(row), example.group);
        let back: Vec<Message> = serde_json::from_str(messages.value(row)).unwrap();
        assert_eq!(back, example.messages);
    }
}

// ---------------------------------------------------------------------------------------
// Splits over written files

#[test]
fn split_files_share_no_prompt() {
    let spec = SplitSpec::parse("0.6,0.2,0.2", 11).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let mut writers: BTreeMap<SplitName, TrlWriter<_>> = SplitName::ALL
        .into_iter()
        .map(|split| {
            let path = temp.path().join(format!("{}.jsonl", split.file_stem()));
            (split, TrlWriter::create(&path, TrlLayout::Preference, true).unwrap())
        })
        .collect();
    let config = CmvBuildConfig { negatives_per_positive: 2, ..CmvBuildConfig::default() };
    let mut rng = SplitMix64::new(3);
    let mut stats = BuildStats::default();
    for number in 0..300 {
        for example in cmv::dpo_examples(&fixtures::small_thread(number), &config, &mut rng, &mut stats) {
            writers.get_mut(&spec.assign(&example.group)).unwrap().write_preference(&example).unwrap();
        }
    }
    let mut total = 0;
    for writer in writers.into_values() {
        total += writer.finish().unwrap();
    }
    assert_eq!(total, stats.examples);
    let mut split_of_post: HashMap<String, SplitName> = HashMap::new();
    for split in SplitName::ALL {
        let records = read_jsonl(&temp.path().join(format!("{}.jsonl", split.file_stem())));
        assert!(records.len() > 100, "{split}: {}", records.len());
        for record in records {
            let post = record["prompt"][0]["content"].as_str().unwrap().to_string();
            let earlier = *split_of_post.entry(post.clone()).or_insert(split);
            assert_eq!(earlier, split, "{post:?} is in {earlier} and {split}");
        }
    }
    assert_eq!(split_of_post.len(), 300);
}
