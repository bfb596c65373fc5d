//! Reading scores, verdicts and labels out of realistic judge and annotator replies,
//! including the default model's habits: restating the format, markdown, extra prose and
//! several numbers.

use agora_core::Score;
use agora_sim::parse::ScoreParser;

/// What a reply should parse to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Value(f64),
    Label(&'static str),
    Unparsed,
}

fn check(parser: &ScoreParser, reply: &str, expected: Expect) {
    let score = parser.parse(reply);
    let expected_score = match expected {
        Expect::Value(value) => Score::Value { value },
        Expect::Label(label) => Score::Label { label: label.to_string() },
        Expect::Unparsed => Score::Unparsed { raw: reply.to_string() },
    };
    assert_eq!(score, expected_score, "parser {parser:?} on reply {reply:?}");
}

fn toxicity() -> ScoreParser {
    ScoreParser::KeyValue { key: "Toxicity".to_string(), min: 1.0, max: 5.0 }
}

fn rating() -> ScoreParser {
    ScoreParser::Number { min: 1.0, max: 7.0 }
}

fn verdict() -> ScoreParser {
    ScoreParser::Verdict { choices: vec!["A".into(), "B".into(), "C".into()] }
}

use Expect::{Label, Unparsed, Value};

#[test]
fn key_value_reads_the_requested_format_and_its_variants() {
    let cases = [
        ("Toxicity=4", Value(4.0)),
        ("toxicity: 4", Value(4.0)),
        ("TOXICITY : 2", Value(2.0)),
        ("**Toxicity** = 4/5", Value(4.0)),
        ("**Toxicity:** 3", Value(3.0)),
        ("Toxicity = <4>", Value(4.0)),
        ("Toxicity = [5]", Value(5.0)),
        ("Toxicity: **1**", Value(1.0)),
        ("`Toxicity=2`", Value(2.0)),
        ("Toxicity score: 3", Value(3.0)),
        ("Toxicity level = 2 out of 5", Value(2.0)),
        ("Toxicity is 1", Value(1.0)),
        ("Toxicity: 2.5", Value(2.5)),
        ("Toxicity (1-5): 3", Value(3.0)),
        ("**Toxicity** [1 to 5] = 2", Value(2.0)),
        ("Toxicity (out of 5): 4", Value(4.0)),
        ("The comment is rude but not hateful.\n\nToxicity=3", Value(3.0)),
        ("Toxicity=3.\nThe comment is sarcastic.", Value(3.0)),
        ("## Annotation\n- Toxicity: 4\n- Reason: insults the other user", Value(4.0)),
    ];
    for (reply, expected) in cases {
        check(&toxicity(), reply, expected);
    }
}

#[test]
fn key_value_takes_the_last_well_formed_occurrence() {
    let cases = [
        // The default model restates the format before answering.
        ("Toxicity=<number>\nToxicity=2", Value(2.0)),
        ("You asked for Toxicity=<1-5>. My answer: Toxicity=4", Value(4.0)),
        ("Toxicity: 1-5 scale. The comment is mild.\nToxicity: 2", Value(2.0)),
        ("Toxicity: 1 to 5\nToxicity: 5", Value(5.0)),
        ("Toxicity=1\nOn reflection, Toxicity=3", Value(3.0)),
        ("Toxicity=2\nToxicity=<number>", Value(2.0)),
        // The key has to be followed by a separator.
        ("The toxicity of this comment is low, Toxicity=1", Value(1.0)),
        ("Rate the toxicity of the comment 4", Unparsed),
    ];
    for (reply, expected) in cases {
        check(&toxicity(), reply, expected);
    }
}

#[test]
fn key_value_refuses_what_it_cannot_read() {
    let cases = [
        ("Toxicity=7", Unparsed),
        ("Toxicity=0", Unparsed),
        ("Toxicity=2\nToxicity=9", Unparsed),
        ("Toxicity=<number>", Unparsed),
        ("Toxicity: high", Unparsed),
        ("4", Unparsed),
        ("", Unparsed),
        ("Toxicityy=3", Unparsed),
        ("NonToxicity=3", Unparsed),
        ("I cannot rate this comment.", Unparsed),
    ];
    for (reply, expected) in cases {
        check(&toxicity(), reply, expected);
    }
}

#[test]
fn key_value_keys_with_spaces_and_negative_ranges() {
    let agreement = ScoreParser::KeyValue { key: "Strategy adherence".into(), min: -2.0, max: 2.0 };
    check(&agreement, "strategy adherence: -1", Value(-1.0));
    check(&agreement, "**Strategy Adherence** = 2", Value(2.0));
    check(&agreement, "Strategy adherence: -2 to 2\nStrategy adherence: 0", Value(0.0));
    check(&agreement, "Strategy adherence: -3", Unparsed);
}

#[test]
fn number_readings_and_their_priorities() {
    let cases = [
        ("Rating: 6", Value(6.0)),
        ("6/7", Value(6.0)),
        ("6 / 7", Value(6.0)),
        ("I'd give it 6 out of 7.", Value(6.0)),
        ("[[6]]", Value(6.0)),
        ("Rating: [[ 5 ]]", Value(5.0)),
        ("Score: 6.5", Value(6.5)),
        ("I give it a score of 4 because it is clear.", Value(4.0)),
        ("6", Value(6.0)),
        ("6.", Value(6.0)),
        ("**Rating:** 3", Value(3.0)),
        ("The reply is relevant.\nRating: 5\n", Value(5.0)),
        // [[n]] beats everything else.
        ("Score: 3. After more thought: [[5]]", Value(5.0)),
        ("[[2]] ... the rating of the other answer would be Rating: 6", Value(2.0)),
        // A labelled number beats fractions and bare numbers.
        ("The post has 3 arguments; it addresses 2/3 of them. Rating: 5", Value(5.0)),
        // The last labelled number wins.
        ("Rating: 4\nRating: 6", Value(6.0)),
        // Ranges are the scale, not the answer.
        ("On a scale of 1 to 7, I would rate this 5.", Value(5.0)),
        ("On a scale from 1-7: 2", Value(2.0)),
        ("Rating (1-7): 3", Value(3.0)),
        ("Rating (1-7): 3. The post makes 2 points.", Value(3.0)),
        ("Score: 1-7\nScore: 4", Value(4.0)),
        // Bare numbers must agree.
        ("5. The reply is good, so 5.", Value(5.0)),
        ("The reply has 3 strengths and I rate it 5", Unparsed),
        // Out of range: refused, not replaced by a weaker reading.
        ("[[9]] but maybe Rating: 6", Unparsed),
        ("Rating: 0", Unparsed),
        ("Rating: 10/10", Unparsed),
        ("Rating: <number>", Unparsed),
        ("Rate the reply from 1 to 7.", Unparsed),
        ("It is fine.", Unparsed),
        ("SmolLM2 says gpt4 is 4th", Unparsed),
    ];
    for (reply, expected) in cases {
        check(&rating(), reply, expected);
    }
}

#[test]
fn verdicts_in_the_origin_format_and_looser_ones() {
    let cases = [
        ("[[A]]", Label("A")),
        ("JUDGE: [[C]]", Label("C")),
        ("Both replies ask a question, but B also reflects the feeling.\n\nJUDGE: [[B]]", Label("B")),
        ("Verdict: B", Label("B")),
        ("**Final verdict:** A", Label("A")),
        ("Final verdict: Assistant A", Label("A")),
        ("Winner: response B", Label("B")),
        ("Answer: c", Label("C")),
        ("judge: [[b]]", Label("B")),
        ("I think Assistant B is better at following the strategy.", Label("B")),
        ("Response A wins.", Label("A")),
        // [[X]] beats a label line; the last [[X]] wins.
        ("Verdict: A\nJUDGE: [[B]]", Label("B")),
        ("At first [[A]] seemed right, but [[C]]", Label("C")),
        // The default model restates the instructions before (or instead of) answering.
        (
            "output your final verdict: \"JUDGE: [[A]]\" if assistant A is better, \"JUDGE: [[B]]\" if \
             assistant B is better, and \"JUDGE: [[C]]\" for a tie.\nJUDGE: [[A]]",
            Label("A"),
        ),
        (
            "\"JUDGE: [[A]]\" if assistant A is better, \"JUDGE: [[B]]\" if assistant B is better.\nVerdict: B",
            Label("B"),
        ),
        ("\"JUDGE: [[A]]\" if assistant A is better, \"JUDGE: [[B]]\" if assistant B is better", Unparsed),
        (
            "JUDGE: [[A]] when A is better, JUDGE: [[B]] when B is better, or JUDGE: [[C]] for a tie.",
            Unparsed,
        ),
        ("JUDGE: <one of [[A]], [[B]], [[C]]>", Unparsed),
        ("Answer with [[A]], [[B]] or [[C]].\nJUDGE: [[B]]", Label("B")),
        ("JUDGE: [[A]], since A follows the strategy.", Label("A")),
        ("JUDGE: [[A]].", Label("A")),
        // Nothing that names a choice.
        ("[[D]]", Unparsed),
        ("Both are good.", Unparsed),
        ("Verdict: neither", Unparsed),
        ("The answer is long and thoughtful.", Unparsed),
        ("", Unparsed),
    ];
    for (reply, expected) in cases {
        check(&verdict(), reply, expected);
    }
}

#[test]
fn verdicts_with_word_choices() {
    let parser = ScoreParser::Verdict { choices: vec!["first".into(), "second".into(), "tie".into()] };
    check(&parser, "[[Second]]", Label("second"));
    check(&parser, "Verdict: tie", Label("tie"));
    check(&parser, "Verdict: tied", Unparsed);
}

#[test]
fn labels_match_whole_words_and_the_last_one_wins() {
    let sentiment =
        ScoreParser::Label { labels: vec!["positive".into(), "negative".into(), "neutral".into()] };
    let cases = [
        ("positive", Label("positive")),
        ("NEGATIVE", Label("negative")),
        ("**Neutral**", Label("neutral")),
        ("Label: negative.", Label("negative")),
        ("Choose positive, negative or neutral. Answer: neutral", Label("neutral")),
        ("The tone is mostly positive.", Label("positive")),
        ("nonpositive", Unparsed),
        ("positively", Unparsed),
        ("I am not sure.", Unparsed),
    ];
    for (reply, expected) in cases {
        check(&sentiment, reply, expected);
    }

    let toxic = ScoreParser::Label { labels: vec!["toxic".into(), "not toxic".into()] };
    check(&toxic, "This comment is not toxic.", Label("not toxic"));
    check(&toxic, "Not Toxic", Label("not toxic"));
    check(&toxic, "It is not toxic... actually, it is toxic", Label("toxic"));
    check(&toxic, "toxicity unclear", Unparsed);
}

#[test]
fn unparsed_keeps_the_whole_reply() {
    let reply = "  I would rather not judge this.\n  ";
    assert_eq!(rating().parse(reply), Score::Unparsed { raw: reply.to_string() });
}

#[test]
fn parsers_round_trip_through_json() {
    let cases = [
        (toxicity(), r#"{"type":"key_value","key":"Toxicity","min":1.0,"max":5.0}"#),
        (rating(), r#"{"type":"number","min":1.0,"max":7.0}"#),
        (verdict(), r#"{"type":"verdict","choices":["A","B","C"]}"#),
        (
            ScoreParser::Label { labels: vec!["yes".into(), "no".into()] },
            r#"{"type":"label","labels":["yes","no"]}"#,
        ),
    ];
    for (parser, json) in cases {
        assert_eq!(serde_json::to_string(&parser).unwrap(), json);
        assert_eq!(serde_json::from_str::<ScoreParser>(json).unwrap(), parser);
    }
    let from_integers: ScoreParser = serde_json::from_str(r#"{"type":"number","min":1,"max":7}"#).unwrap();
    assert_eq!(from_integers, rating());
    assert_eq!(rating().range(), Some((1.0, 7.0)));
    assert_eq!(verdict().range(), None);
}
