//! Planning strategy-conditioned continuations: cut points, unit keys, the two prompt
//! layouts, and cleaning replies; checked on a hand-written ESConv-style fixture and, when
//! present, on ESConv-SRA's published prompts.

use agora_core::{ChatRole, Conversation, Message, Role, Source, Turn, TurnLabels};
use agora_sim::continuation::{CutSpec, HistoryLayout, clean_reply, cut_points, plan_continuations};
use agora_sim::strategies::{StrategyDef, StrategySet};

fn fixture() -> Conversation {
    serde_json::from_str(include_str!("../test_data/judge/esconv_fixture.json")).unwrap()
}

fn situation(conversation: &Conversation) -> Option<&str> {
    conversation.meta.get("situation").and_then(|value| value.as_str())
}

fn check_cuts(conversation: &Conversation, cuts: CutSpec, expected: &[u32]) {
    assert_eq!(cut_points(conversation, &cuts), expected, "{cuts:?}");
}

fn roles(messages: &[Message]) -> Vec<ChatRole> {
    messages.iter().map(|message| message.role).collect()
}

#[test]
fn cut_points_follow_the_seeker() {
    let conversation = fixture();
    check_cuts(&conversation, CutSpec::EveryTurn { role: Role::Assistant }, &[3, 5, 8]);
    check_cuts(&conversation, CutSpec::Last, &[8]);
    check_cuts(&conversation, CutSpec::Turns { turns: vec![5, 2, 99, 5, 0, 3] }, &[3, 5]);
    // Continuing the seeker instead: after each supporter turn that the seeker answers.
    check_cuts(&conversation, CutSpec::EveryTurn { role: Role::User }, &[1, 4, 7]);

    let mut ends_with_supporter = fixture();
    ends_with_supporter.turns.truncate(7);
    check_cuts(&ends_with_supporter, CutSpec::Last, &[5]);
    ends_with_supporter.turns.truncate(1);
    check_cuts(&ends_with_supporter, CutSpec::Last, &[]);
}

#[test]
fn one_item_per_cut_and_strategy_with_stable_keys() {
    let conversation = fixture();
    let strategies = StrategySet::Esconv.strategies();
    let items = plan_continuations(
        &conversation,
        situation(&conversation),
        &CutSpec::EveryTurn { role: Role::Assistant },
        &strategies,
        HistoryLayout::Partial,
    );
    assert_eq!(items.len(), 3 * 8);
    assert_eq!(items[0].key, "esconv:fixture-1/3/Question");
    assert_eq!(items[23].key, "esconv:fixture-1/8/Others");
    assert!(items.iter().all(|item| item.conversation_id == "esconv:fixture-1"));
    let mut keys: Vec<&str> = items.iter().map(|item| item.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), items.len());
    let again = plan_continuations(
        &conversation,
        situation(&conversation),
        &CutSpec::EveryTurn { role: Role::Assistant },
        &strategies,
        HistoryLayout::Partial,
    );
    assert_eq!(again, items, "planning is deterministic");
}

#[test]
fn full_layout_puts_every_turn_in_its_own_message() {
    let conversation = fixture();
    let strategy = StrategySet::Extes.find("Offer Hope").unwrap();
    let items = plan_continuations(
        &conversation,
        situation(&conversation),
        &CutSpec::Last,
        std::slice::from_ref(&strategy),
        HistoryLayout::Full,
    );
    assert_eq!(items.len(), 1);
    let messages = &items[0].messages;
    assert_eq!(
        roles(messages),
        [
            ChatRole::System,
            ChatRole::User,
            ChatRole::Assistant,
            ChatRole::User,
            ChatRole::Assistant,
            ChatRole::User
        ]
    );
    // The leading supporter turn is dropped; consecutive turns of one side are joined.
    assert_eq!(messages[1].content, "Hi.\nI failed my driving test for the third time.");
    assert_eq!(messages[4].content, "Lots of people need several attempts.\nI needed three tries myself!");
    assert_eq!(messages[5].content, "Really? I feel like giving up.");
    let system = &messages[0].content;
    for fragment in [
        "caring friend",
        "\"I keep failing my driving test and feel stupid.\"",
        "\"Offer Hope\"",
        &strategy.description,
        "one short paragraph",
    ] {
        assert!(system.contains(fragment), "missing {fragment:?} in {system}");
    }
}

#[test]
fn partial_layout_writes_the_history_into_the_system_message() {
    let conversation = fixture();
    let strategy = StrategyDef::new("Humour", "Lighten the mood with a gentle joke.");
    let items = plan_continuations(
        &conversation,
        None,
        &CutSpec::Turns { turns: vec![5, 8] },
        std::slice::from_ref(&strategy),
        HistoryLayout::Partial,
    );
    assert_eq!(items.len(), 2);

    let at_five = &items[0].messages;
    assert_eq!(roles(at_five), [ChatRole::System, ChatRole::User]);
    assert_eq!(at_five[1].content, "I panicked at a roundabout. Everyone else passes first try.");
    assert!(at_five[0].content.starts_with(
        "The conversation so far:\nFriend: Hi.\nI failed my driving test for the third time.\n\
         You: Oh no, that must be so frustrating. What happened this time?\n\n"
    ));
    assert!(!at_five[0].content.contains("roundabout"), "the last message is not repeated in the history");
    assert!(at_five[0].content.contains("come to talk to you"), "no situation given");
    assert!(at_five[0].content.contains("(Humour: Lighten the mood with a gentle joke.)"));

    let at_end = &items[1].messages;
    assert_eq!(at_end[1].content, "Really? I feel like giving up.");
    assert!(
        at_end[0]
            .content
            .contains("You: Lots of people need several attempts.\nI needed three tries myself!\n")
    );

    let mut first_message_only = fixture();
    first_message_only.turns.truncate(3);
    let items =
        plan_continuations(&first_message_only, None, &CutSpec::Last, &[strategy], HistoryLayout::Partial);
    assert!(items[0].messages[0].content.contains("(this is your friend's first message)"));
    assert_eq!(items[0].messages[1].content, "Hi.\nI failed my driving test for the third time.");
}

#[test]
fn layouts_round_trip_through_json() {
    assert_eq!(serde_json::to_string(&HistoryLayout::Partial).unwrap(), r#""partial""#);
    assert_eq!(serde_json::from_str::<HistoryLayout>(r#""full""#).unwrap(), HistoryLayout::Full);
    for (cuts, json) in [
        (CutSpec::EveryTurn { role: Role::Assistant }, r#"{"type":"every_turn","role":"assistant"}"#),
        (CutSpec::Last, r#"{"type":"last"}"#),
        (CutSpec::Turns { turns: vec![3, 5] }, r#"{"type":"turns","turns":[3,5]}"#),
    ] {
        assert_eq!(serde_json::to_string(&cuts).unwrap(), json);
        assert_eq!(serde_json::from_str::<CutSpec>(json).unwrap(), cuts);
    }
    let defaulted: CutSpec = serde_json::from_str(r#"{"type":"every_turn"}"#).unwrap();
    assert_eq!(defaulted, CutSpec::EveryTurn { role: Role::Assistant });
}

fn check_clean(raw: &str, expected: &str) {
    assert_eq!(clean_reply(raw), expected, "raw {raw:?}");
}

#[test]
fn clean_reply_strips_labels_and_the_seekers_next_turn() {
    check_clean("assistant: I'm so sorry to hear that.", "I'm so sorry to hear that.");
    check_clean("  Assistant:  You did your best. ", "You did your best.");
    check_clean("**Assistant:** You did your best.", "You did your best.");
    check_clean("assistant: assistant: Twice labelled.", "Twice labelled.");
    check_clean("Supporter: Keep going.", "Keep going.");
    check_clean("You: Keep going.", "Keep going.");
    check_clean("That sounds hard.\nuser: yes it is\nassistant: I know.", "That sounds hard.");
    check_clean("That sounds hard.\nSeeker: thanks", "That sounds hard.");
    check_clean("First line.\nSecond line.", "First line.\nSecond line.");
    check_clean(
        "Your feelings matter: assistant: is a label only at the start.",
        "Your feelings matter: assistant: is a label only at the start.",
    );
    check_clean("Assistants often help.", "Assistants often help.");
    check_clean("", "");
}

/// Converts one of ESConv-SRA's output files into a conversation.
fn conversation_from_sra(id: &str, record: &serde_json::Value) -> Conversation {
    let dialog = record["dialog"].as_array().unwrap();
    let speakers = record["speakers"].as_array().unwrap();
    let turns = dialog
        .iter()
        .zip(speakers)
        .enumerate()
        .map(|(index, (text, speaker))| {
            let speaker = speaker.as_str().unwrap();
            Turn {
                index: index as u32,
                original_id: None,
                speaker: speaker.to_string(),
                role: if speaker == "seeker" { Role::User } else { Role::Assistant },
                text: text.as_str().unwrap().to_string(),
                reply_to: None,
                labels: TurnLabels::default(),
            }
        })
        .collect();
    Conversation {
        id: format!("esconv-sra:{id}"),
        source: Source { corpus: "esconv-sra".into(), original_id: id.into() },
        participants: vec![],
        turns,
        meta: Default::default(),
    }
}

#[test]
fn plans_match_the_published_esconv_sra_prompts() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/esconv-sra");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        eprintln!("skipping: {} is absent", folder.display());
        return;
    };
    let mut checked = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "json") {
            continue;
        }
        let id = path.file_stem().unwrap().to_str().unwrap().to_string();
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let conversation = conversation_from_sra(&id, &record);
        let situation = record["situation"].as_str();
        let prompts = record["prompts"].as_object().unwrap();
        let strategies: Vec<StrategyDef> = record["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|name| {
                StrategySet::ExtesSra.find(name).unwrap_or_else(|| panic!("{id}: unknown strategy {name}"))
            })
            .collect();
        let dialog_length = record["dialog"].as_array().unwrap().len() as u32;
        let last_seeker_text = record["dialog"].as_array().unwrap().last().unwrap().as_str().unwrap().trim();

        for layout in [HistoryLayout::Full, HistoryLayout::Partial] {
            let items = plan_continuations(&conversation, situation, &CutSpec::Last, &strategies, layout);
            assert_eq!(items.len(), strategies.len(), "{id} {layout:?}");
            for (item, strategy) in items.iter().zip(&strategies) {
                assert_eq!(item.cut_turn, dialog_length, "{id}: continue after the seeker's last turn");
                assert_eq!(item.key, format!("esconv-sra:{id}/{dialog_length}/{}", strategy.name));
                let last = item.messages.last().unwrap();
                assert_eq!((last.role, last.content.as_str()), (ChatRole::User, last_seeker_text), "{id}");
                assert!(item.messages[0].content.contains(&format!("\"{}\"", strategy.name)));
                assert!(item.messages[0].content.contains(situation.unwrap().trim()));

                // The same history as the origin's prompt, turn for turn.
                let origin_prompt = prompts[&strategy.name].as_str().unwrap();
                assert!(origin_prompt.contains(&format!("<</SYS>>\n\n{last_seeker_text} [/INST]")), "{id}");
                if layout == HistoryLayout::Full {
                    let history: String = item.messages[1..item.messages.len() - 1]
                        .iter()
                        .map(|message| format!("{}: {}\n", message.role.as_str(), message.content))
                        .collect();
                    let expected = format!("conversation history:\n{history}\n");
                    assert!(origin_prompt.contains(&expected), "{id}: {expected:?} not in {origin_prompt:?}");
                } else {
                    assert_eq!(item.messages.len(), 2, "{id}");
                }
            }
            checked += items.len();
        }
        for response in record["responses"].as_object().unwrap().values() {
            let response = response.as_str().unwrap();
            assert_eq!(clean_reply(&format!("assistant: {response}")), response.trim());
        }
    }
    assert!(checked > 0, "no ESConv-SRA prompts were checked in {}", folder.display());
}
