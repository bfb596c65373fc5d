//! Store round trips: imports are atomic and idempotent, conversations read back as
//! they went in, statistics count what is there.

use agora_core::{Conversation, Delta, Persona, Role, Source, Strategy, Turn, TurnLabels};
use agora_store::{NamedText, Store};
use serde_json::json;

fn turn(index: u32, speaker: &str, role: Role, text: &str, reply_to: Option<u32>) -> Turn {
    Turn {
        index,
        original_id: Some(format!("c{index}")),
        speaker: speaker.into(),
        role,
        text: text.into(),
        reply_to,
        labels: TurnLabels::default(),
    }
}

fn thread(original_id: &str, winner_text: &str) -> Conversation {
    let mut turns = vec![
        turn(0, "op", Role::User, "CMV: tabs are better", None),
        turn(1, "a", Role::Assistant, winner_text, Some(0)),
        turn(2, "op", Role::User, "∆ fair point", Some(1)),
        turn(3, "b", Role::Assistant, "no", Some(0)),
    ];
    turns[1].labels.delta =
        Some(Delta { giver: "op".into(), receiver: "a".into(), given_in: 2, confirmed: true, by_op: true });
    turns[2].labels.gives_delta = true;
    let mut meta = agora_core::Meta::new();
    meta.insert("title".into(), json!("Tabs"));
    Conversation {
        id: format!("cmv:{original_id}"),
        source: Source { corpus: "cmv".into(), original_id: original_id.into() },
        participants: vec![],
        turns,
        meta,
    }
}

fn import(store: &Store, name: &str, conversations: &[Conversation]) -> agora_store::ImportCounts {
    let mut batch = store.begin_import(name, "cmv").unwrap();
    for conversation in conversations {
        batch.add(conversation).unwrap();
    }
    batch.finish("fixture.jsonlist", &json!({})).unwrap()
}

#[test]
fn round_trip_and_idempotent_reimport() {
    let store = Store::in_memory().unwrap();
    let first = import(&store, "cmv", &[thread("t1", "spaces lose"), thread("t2", "x")]);
    assert_eq!((first.added, first.unchanged, first.replaced, first.turns_written), (2, 0, 0, 8));

    let again = import(&store, "cmv", &[thread("t1", "spaces lose"), thread("t2", "changed")]);
    assert_eq!((again.added, again.unchanged, again.replaced), (0, 1, 1));

    let stored = store.conversation("cmv:t1").unwrap().unwrap();
    let original = thread("t1", "spaces lose");
    assert_eq!(stored.turns, original.turns);
    assert_eq!(stored.meta, original.meta);
    assert_eq!(store.conversation("cmv:t2").unwrap().unwrap().turns[1].text, "changed");
    assert!(store.conversation("cmv:nope").unwrap().is_none());

    let corpora = store.corpora().unwrap();
    assert_eq!(corpora.len(), 1);
    assert_eq!((corpora[0].conversations, corpora[0].turns, corpora[0].imports), (2, 8, 2));

    let stats = store.stats(Some("cmv")).unwrap();
    assert_eq!((stats.conversations, stats.turns, stats.deltas, stats.deltas_by_op), (2, 8, 2, 2));
    assert_eq!(stats.delta_comments, 2);
    assert_eq!(stats.roles.get("assistant"), Some(&4));
}

#[test]
fn an_unfinished_import_leaves_nothing() {
    let store = Store::in_memory().unwrap();
    {
        let mut batch = store.begin_import("cmv", "cmv").unwrap();
        batch.add(&thread("t1", "a")).unwrap();
        // Dropped without finish: an import that failed half-way.
    }
    assert!(store.conversation("cmv:t1").unwrap().is_none());
    assert!(store.corpora().unwrap().is_empty());
}

#[test]
fn a_corpus_name_keeps_its_format() {
    let store = Store::in_memory().unwrap();
    import(&store, "mixed", &[thread("t1", "a")]);
    let error = store.begin_import("mixed", "esconv").unwrap_err();
    assert!(error.to_string().contains("holds cmv data"), "{error}");
}

#[test]
fn streaming_reads_visit_every_conversation_in_order() {
    let store = Store::in_memory().unwrap();
    import(&store, "cmv", &[thread("b", "x"), thread("a", "y")]);
    let mut seen = Vec::new();
    store
        .for_each_conversation("cmv", |conversation| {
            seen.push(conversation.id);
            Ok::<_, agora_store::StoreError>(())
        })
        .unwrap();
    assert_eq!(seen, vec!["cmv:a", "cmv:b"]);
}

#[test]
fn strategies_are_counted() {
    let store = Store::in_memory().unwrap();
    let mut conversation = thread("s", "x");
    conversation.turns[3].labels.strategy = Some(Strategy::Question);
    let mut batch = store.begin_import("es", "esconv").unwrap();
    batch.add(&conversation).unwrap();
    batch.finish("x", &json!({})).unwrap();
    let stats = store.stats(None).unwrap();
    assert_eq!(stats.strategies.get("Question"), Some(&1));
}

#[test]
fn personas_and_texts_replace_by_name() {
    let mut store = Store::in_memory().unwrap();
    let persona = Persona { name: "TechGuru88".into(), ..Persona::default() };
    store
        .put_personas("sdf", &[persona.clone(), Persona { name: "Chill".into(), ..Persona::default() }])
        .unwrap();
    store.put_personas("sdf", &[persona]).unwrap();
    assert_eq!(store.personas("sdf").unwrap().len(), 2);
    store.put_texts("topics", &[NamedText { name: "t1".into(), text: "Tabs?".into() }]).unwrap();
    store.put_texts("topics", &[NamedText { name: "t1".into(), text: "Spaces?".into() }]).unwrap();
    assert_eq!(store.texts("topics").unwrap()[0].text, "Spaces?");
    assert_eq!(store.collections().unwrap().len(), 2);
}
