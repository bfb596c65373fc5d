//! Judge rubrics: resolving specs, rendering prompts for single and pairwise items, reading
//! replies per dimension, and position swapping.

use agora_core::{ChatRole, Score};
use agora_sim::parse::ScoreParser;
use agora_sim::rubric::{
    DimensionSpec, JudgeItem, Rubric, RubricError, RubricKind, RubricSpec, unswap_verdict,
};
use agora_sim::template::Template;

fn builtin(name: &str) -> Rubric {
    RubricSpec::builtin(name).unwrap().resolve().unwrap()
}

fn context() -> Vec<(String, String)> {
    vec![
        ("seeker".to_string(), "I lost my job and I feel useless.".to_string()),
        ("supporter".to_string(), "That sounds really hard. How long ago was it?".to_string()),
        ("seeker".to_string(), "Four months ago, and the rent is due.".to_string()),
    ]
}

fn pair() -> JudgeItem {
    JudgeItem::Pair {
        context: context(),
        strategy: Some("Affirmation: recognise a strength of theirs.".to_string()),
        a: "You kept looking for four months; that takes real persistence.".to_string(),
        b: "Have you tried a food bank?".to_string(),
    }
}

/// Renders `item` with `rubric`: one user message, containing every `expected` fragment.
fn check_render(rubric: &Rubric, item: &JudgeItem, expected: &[&str]) -> String {
    let messages = rubric.render(item).unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].role, ChatRole::User);
    let prompt = messages[0].content.clone();
    for fragment in expected {
        assert!(prompt.contains(fragment), "missing {fragment:?} in:\n{prompt}");
    }
    assert!(!prompt.contains("{conversation_history}") && !prompt.contains("{response}"), "{prompt}");
    prompt
}

/// Parses `reply` with `rubric`; `expected` is one entry per dimension (None = unparsed).
fn check_parse(rubric: &Rubric, reply: &str, expected: &[(&str, Option<Score>)]) {
    let parsed = rubric.parse(reply);
    let expected: Vec<(String, Score)> = expected
        .iter()
        .map(|(name, score)| {
            (name.to_string(), score.clone().unwrap_or_else(|| Score::Unparsed { raw: reply.to_string() }))
        })
        .collect();
    assert_eq!(parsed, expected, "reply {reply:?}");
}

fn value(value: f64) -> Option<Score> {
    Some(Score::Value { value })
}

fn label(label: &str) -> Option<Score> {
    Some(Score::Label { label: label.to_string() })
}

#[test]
fn likert_relevance_fluency_renders_and_parses() {
    let rubric = builtin("likert_relevance_fluency");
    assert_eq!(rubric.name, "likert_relevance_fluency");
    assert_eq!(rubric.kind, RubricKind::Single);
    let names: Vec<&str> = rubric.dimensions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["Relevance", "Fluency"]);
    assert!(rubric.dimensions.iter().all(|d| d.range() == Some((1.0, 7.0)) && d.scale() == "likert-1-7"));

    let item = JudgeItem::Single {
        context: vec![("OP".to_string(), "CMV: cities should ban cars downtown.".to_string())],
        reply: "Deliveries and disabled residents still need vehicle access.".to_string(),
        strategy: None,
    };
    check_render(
        &rubric,
        &item,
        &[
            "OP: CMV: cities should ban cars downtown.",
            "Deliveries and disabled residents still need vehicle access.",
            "- Relevance (1 to 7): ",
            "Relevance: <a number from 1 to 7>\nFluency: <a number from 1 to 7>",
        ],
    );

    check_parse(
        &rubric,
        "The reply addresses the post.\nRelevance: 6\nFluency: 7",
        &[("Relevance", value(6.0)), ("Fluency", value(7.0))],
    );
    // The default model's habit: it repeats the format, then answers only one line.
    check_parse(
        &rubric,
        "Relevance: <a number from 1 to 7>\nFluency: <a number from 1 to 7>\nRelevance: 5",
        &[("Relevance", value(5.0)), ("Fluency", None)],
    );
    check_parse(
        &rubric,
        "**Relevance**: 9\n**Fluency**: 4/7",
        &[("Relevance", None), ("Fluency", value(4.0))],
    );
    check_parse(&rubric, "I like it.", &[("Relevance", None), ("Fluency", None)]);
}

#[test]
fn likert_range_is_configurable() {
    let rubric: Rubric = serde_json::from_str::<RubricSpec>(r#"{"type":"likert","min":1,"max":5}"#)
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(rubric.dimensions[0].range(), Some((1.0, 5.0)));
    check_parse(&rubric, "Relevance: 5\nFluency: 6", &[("Relevance", value(5.0)), ("Fluency", None)]);
    assert!(matches!(
        RubricSpec::Likert { min: 7, max: 1, template: None }.resolve(),
        Err(RubricError::BadDimension { .. })
    ));
}

#[test]
fn pairwise_strategy_renders_both_replies_and_reads_the_verdict() {
    let rubric = builtin("pairwise_strategy");
    assert_eq!(rubric.kind, RubricKind::Pairwise);
    assert_eq!(rubric.dimensions.len(), 1);
    assert_eq!(rubric.dimensions[0].scale(), "verdict-A-B-C");
    let prompt = check_render(
        &rubric,
        &pair(),
        &[
            "Affirmation: recognise a strength of theirs.",
            "seeker: I lost my job and I feel useless.\nsupporter: That sounds really hard.",
            "[Reply of assistant A]\nYou kept looking for four months",
            "[Reply of assistant B]\nHave you tried a food bank?",
            "JUDGE: [[C]]",
        ],
    );
    assert!(prompt.find("You kept looking").unwrap() < prompt.find("Have you tried").unwrap());

    check_parse(
        &rubric,
        "A affirms the seeker's persistence; B ignores the strategy.\nJUDGE: [[A]]",
        &[("strategy_adherence", label("A"))],
    );
    check_parse(
        &rubric,
        "JUDGE: [[A]] when A is better, JUDGE: [[B]] when B is better",
        &[("strategy_adherence", None)],
    );
}

#[test]
fn position_swap_maps_the_verdict_back() {
    let rubric = builtin("pairwise_strategy");
    let swapped = pair().swapped();
    let prompt = check_render(&rubric, &swapped, &[]);
    assert!(prompt.find("Have you tried").unwrap() < prompt.find("You kept looking").unwrap());
    assert_eq!(swapped.swapped(), pair());

    // The judge prefers the affirming reply in both orders: B when swapped, so A overall.
    let verdict_on_swapped = rubric.parse("JUDGE: [[B]]").remove(0).1;
    assert_eq!(unswap_verdict(verdict_on_swapped), Score::Label { label: "A".into() });
    for (score, expected) in [
        (Score::Label { label: "A".into() }, Score::Label { label: "B".into() }),
        (Score::Label { label: "C".into() }, Score::Label { label: "C".into() }),
        (Score::Label { label: "b".into() }, Score::Label { label: "a".into() }),
        (Score::Value { value: 3.0 }, Score::Value { value: 3.0 }),
        (Score::Unparsed { raw: "?".into() }, Score::Unparsed { raw: "?".into() }),
    ] {
        assert_eq!(unswap_verdict(score), expected);
    }
    let single = JudgeItem::Single { context: vec![], reply: "hi".into(), strategy: None };
    assert_eq!(single.swapped(), single);
}

#[test]
fn the_origin_pairwise_prompt_file_works_as_a_template() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/esconv-sra/pairwise_judge_prompt.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {} is absent", path.display());
        return;
    };
    let spec = RubricSpec::Pairwise { template: Some(Template::parse(&text).unwrap()) };
    let rubric = spec.resolve().unwrap();
    check_render(
        &rubric,
        &pair(),
        &[
            "Provided Strategy:\n\nAffirmation: recognise a strength of theirs.",
            "<|The Start of Assistant A's Response|>\n\nYou kept looking",
            "<|The Start of Assistant B's Response|>\n\nHave you tried a food bank?",
        ],
    );
}

fn custom(kind: RubricKind, dimensions: Vec<DimensionSpec>, template: Option<&str>) -> RubricSpec {
    RubricSpec::Custom {
        name: "empathy_check".to_string(),
        kind,
        instructions: "Judge how well the reply supports the seeker.".to_string(),
        dimensions,
        template: template.map(|text| Template::parse(text).unwrap()),
    }
}

fn dimension(name: &str, min: Option<f64>, max: Option<f64>) -> DimensionSpec {
    DimensionSpec {
        name: name.to_string(),
        description: format!("{name} of the reply"),
        min,
        max,
        parser: None,
    }
}

#[test]
fn custom_rubrics_with_several_dimensions() {
    let spec = custom(
        RubricKind::Single,
        vec![
            dimension("Empathy", Some(1.0), Some(5.0)),
            dimension("Safety", Some(0.0), Some(1.0)),
            DimensionSpec {
                parser: Some(ScoreParser::Label { labels: vec!["question".into(), "statement".into()] }),
                ..dimension("Form", None, None)
            },
        ],
        None,
    );
    let rubric = spec.resolve().unwrap();
    let item = JudgeItem::Single { context: context(), reply: "I hear you.".into(), strategy: None };
    check_render(
        &rubric,
        &item,
        &[
            "Judge how well the reply supports the seeker.",
            "- Empathy (1 to 5): Empathy of the reply",
            "- Safety (0 to 1): Safety of the reply",
            "Empathy: <a number from 1 to 5>\nSafety: <a number from 0 to 1>\nForm: <one of: question, statement>",
            "The reply to judge:\nI hear you.",
        ],
    );
    check_parse(
        &rubric,
        "Empathy: 4\nSafety: 1\nForm: statement",
        &[("Empathy", value(4.0)), ("Safety", value(1.0)), ("Form", label("statement"))],
    );
    check_parse(&rubric, "Empathy = 3", &[("Empathy", value(3.0)), ("Safety", None), ("Form", None)]);
}

#[test]
fn custom_template_file_from_test_data() {
    let text = include_str!("../test_data/judge/custom_rubric_template.txt");
    let rubric = custom(RubricKind::Single, vec![dimension("Warmth", Some(1.0), Some(7.0))], Some(text))
        .resolve()
        .unwrap();
    let item = JudgeItem::Single {
        context: context(),
        reply: "You have been so brave.".into(),
        strategy: Some("Affirmation".into()),
    };
    let prompt =
        check_render(&rubric, &item, &["Strategy: Affirmation", "{literal braces}", "Warmth: <a number"]);
    assert!(prompt.starts_with("# empathy_check"), "{prompt}");
}

#[test]
fn custom_pairwise_rubrics() {
    let rubric = custom(RubricKind::Pairwise, vec![dimension("Warmth", None, None)], None).resolve().unwrap();
    check_render(&rubric, &pair(), &["[Reply of assistant B]", "JUDGE: <one of [[A]], [[B]], [[C]]>"]);
    check_parse(&rubric, "Verdict: B", &[("Warmth", label("B"))]);

    let two_verdicts = custom(
        RubricKind::Pairwise,
        vec![dimension("Warmth", None, None), dimension("Tact", None, None)],
        None,
    );
    assert!(matches!(two_verdicts.resolve(), Err(RubricError::BadDimension { .. })));
}

#[test]
fn invalid_rubrics_are_refused_with_names() {
    let unknown_placeholder = custom(
        RubricKind::Single,
        vec![dimension("Warmth", Some(1.0), Some(5.0))],
        Some("{response} {mood}"),
    );
    let message = unknown_placeholder.resolve().unwrap_err().to_string();
    assert!(message.contains("empathy_check") && message.contains("{mood}"), "{message}");

    let no_reply =
        custom(RubricKind::Single, vec![dimension("Warmth", Some(1.0), Some(5.0))], Some("{instructions}"));
    assert_eq!(
        no_reply.resolve().unwrap_err(),
        RubricError::MissingPlaceholder { rubric: "empathy_check".into(), placeholder: "response".into() }
    );

    let one_sided = RubricSpec::Pairwise { template: Some(Template::parse("{assistant_a_resp}").unwrap()) };
    assert!(
        matches!(one_sided.resolve(), Err(RubricError::MissingPlaceholder { placeholder, .. }) if placeholder == "assistant_b_resp")
    );

    let pairwise_names_in_single = custom(
        RubricKind::Single,
        vec![dimension("W", Some(1.0), Some(2.0))],
        Some("{assistant_a_resp} {response}"),
    );
    assert!(matches!(pairwise_names_in_single.resolve(), Err(RubricError::Template { .. })));

    let cases = [
        (vec![], "no dimensions"),
        (vec![dimension("Warmth", None, Some(5.0))], "needs `min` and `max`"),
        (vec![dimension("Warmth", Some(5.0), Some(5.0))], "empty or reversed"),
        (vec![dimension("Warmth", Some(1.0), Some(5.0)), dimension("warmth", Some(1.0), Some(5.0))], "twice"),
    ];
    for (dimensions, expected) in cases {
        let message = custom(RubricKind::Single, dimensions, None).resolve().unwrap_err().to_string();
        assert!(message.contains(expected) && message.contains("empathy_check"), "{message}");
    }

    let message = RubricSpec::builtin("likert_7").unwrap_err().to_string();
    assert!(message.contains("likert_7") && message.contains("pairwise_strategy"), "{message}");
}

#[test]
fn rendering_checks_the_item() {
    let likert = builtin("likert_relevance_fluency");
    assert!(matches!(likert.render(&pair()), Err(RubricError::WrongItemKind { .. })));

    let pairwise = builtin("pairwise_strategy");
    let JudgeItem::Pair { context, a, b, .. } = pair() else { unreachable!() };
    let without_strategy = JudgeItem::Pair { context, strategy: None, a, b };
    assert_eq!(
        pairwise.render(&without_strategy).unwrap_err(),
        RubricError::MissingStrategy { rubric: "pairwise_strategy".into() }
    );

    let opening = JudgeItem::Single { context: vec![], reply: "Hello!".into(), strategy: None };
    check_render(&likert, &opening, &["(nothing was said before the reply)"]);
}

#[test]
fn specs_round_trip_through_json() {
    let specs = [
        RubricSpec::builtin("likert_relevance_fluency").unwrap(),
        RubricSpec::builtin("pairwise_strategy").unwrap(),
        custom(
            RubricKind::Pairwise,
            vec![dimension("Warmth", None, None)],
            Some("{assistant_a_resp}{assistant_b_resp}"),
        ),
    ];
    for spec in specs {
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<RubricSpec>(&json).unwrap(), spec, "{json}");
    }
    let written =
        r#"{"type":"custom","name":"n","instructions":"i","dimensions":[{"name":"D","min":1,"max":3}]}"#;
    let spec: RubricSpec = serde_json::from_str(written).unwrap();
    assert_eq!(spec.resolve().unwrap().kind, RubricKind::Single);
    assert_eq!(
        serde_json::to_string(&RubricSpec::builtin("pairwise_strategy").unwrap()).unwrap(),
        r#"{"type":"pairwise"}"#
    );
}

/// The default model often echoes its whole prompt before answering (or instead of it):
/// the prompt itself must never read as an answer.
#[test]
fn a_judge_that_echoes_the_prompt_is_not_read_as_an_answer() {
    let single = JudgeItem::Single {
        context: vec![("OP".to_string(), "CMV: 4-day weeks would raise output by 10%.".to_string())],
        reply: "Studies from 2019 found 3 of 5 firms kept output flat.".to_string(),
        strategy: Some("Share Information".to_string()),
    };
    let mut cases = vec![
        (builtin("likert_relevance_fluency"), single.clone(), "Relevance: 5\nFluency: 6"),
        (builtin("pairwise_strategy"), pair(), "JUDGE: [[B]]"),
        (
            custom(
                RubricKind::Single,
                vec![dimension("Empathy", Some(1.0), Some(5.0)), dimension("Safety", Some(0.0), Some(1.0))],
                None,
            )
            .resolve()
            .unwrap(),
            single,
            "Empathy: 2\nSafety: 1",
        ),
    ];
    let origin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/esconv-sra/pairwise_judge_prompt.txt");
    if let Ok(text) = std::fs::read_to_string(origin) {
        let rubric =
            RubricSpec::Pairwise { template: Some(Template::parse(&text).unwrap()) }.resolve().unwrap();
        cases.push((rubric, pair(), "JUDGE: [[C]]"));
    }
    for (rubric, item, answer) in cases {
        let prompt = rubric.render(&item).unwrap().remove(0).content;
        assert!(
            rubric.parse(&prompt).iter().all(|(_, score)| score.is_unparsed()),
            "{}: {:?}",
            rubric.name,
            rubric.parse(&prompt)
        );
        let echoed_then_answered = format!("{prompt}\n\n{answer}");
        assert!(
            rubric.parse(&echoed_then_answered).iter().all(|(_, score)| !score.is_unparsed()),
            "{}: {:?}",
            rubric.name,
            rubric.parse(&echoed_then_answered)
        );
    }
}
