//! Tolerant parsers that read a score, a verdict or a label out of a model's free-text reply.
//!
//! Judge and annotator models rarely answer in exactly the requested format: they restate
//! the instructions ("Toxicity=<number>"), wrap the answer in markdown (`**Toxicity**: 4`),
//! add prose before and after, or mention several numbers. Each parser below looks for the
//! requested format first and falls back to looser readings, and a reply it cannot read with
//! confidence becomes `Score::Unparsed` holding the whole reply, never a guess and never
//! dropped (the origins dropped those silently and biased their means).
//!
//! Matching is ASCII case-insensitive; keys and labels with non-ASCII letters match exactly.

use agora_core::Score;
use serde::{Deserialize, Serialize};

/// How to read one score from a reply. A closed enum so that rubrics and annotation jobs
/// stored as data round-trip through JSON or TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScoreParser {
    /// `Key=4`, `key: 4`, `**Key** = 4/5`, `Key = <4>`, `Key score: 4`. The key matches
    /// case-insensitively as a whole word, and the LAST well-formed occurrence decides, so a
    /// model that restates the format (`Key=<number>`, `Key: 1-5`) before answering is read
    /// correctly. If that last value lies outside `min..=max`, the reply is unparsed.
    KeyValue { key: String, min: f64, max: f64 },
    /// A bare rating. Which number wins, by priority (within a level the last one wins, and
    /// a winner outside `min..=max` leaves the reply unparsed rather than falling through):
    /// 1. `[[6]]`;
    /// 2. a number after `rating`, `score` or `grade` (`Rating: 6`, `score of 6.5`);
    /// 3. the numerator of `6/7` or `6 out of 7`;
    /// 4. bare numbers, ignoring ranges such as `1-7` and `1 to 7`: only when they all have
    ///    the same value; different bare numbers are ambiguous and leave the reply unparsed.
    Number { min: f64, max: f64 },
    /// A choice such as `["A", "B", "C"]`, by priority (the last occurrence within a level):
    /// 1. `[[A]]` (the ESConv-SRA judge format, also `JUDGE: [[A]]`);
    /// 2. `Verdict: B`, `Judge: C`, `Winner: Assistant A`, `Answer: B`, `Decision: A`;
    /// 3. `Assistant A is better`, `Response B wins`.
    ///
    /// Occurrences that restate the instructions (`"[[A]]" if assistant A is better`,
    /// `[[C]] for a tie`, `[[A]], [[B]] or [[C]]`) are skipped.
    Verdict { choices: Vec<String> },
    /// One of `labels`, case-insensitively as a whole word. A match inside a longer label
    /// (`toxic` inside `not toxic`) does not count; the last label mentioned wins.
    Label { labels: Vec<String> },
}

impl ScoreParser {
    /// Reads the reply; `Score::Unparsed` with the whole reply when nothing fits.
    pub fn parse(&self, reply: &str) -> Score {
        let parsed = match self {
            ScoreParser::KeyValue { key, min, max } => parse_key_value(reply, key, *min, *max),
            ScoreParser::Number { min, max } => parse_number(reply, *min, *max),
            ScoreParser::Verdict { choices } => parse_verdict(reply, choices),
            ScoreParser::Label { labels } => parse_label(reply, labels),
        };
        parsed.unwrap_or_else(|| Score::Unparsed { raw: reply.to_string() })
    }

    /// The numeric range of the score, for the parsers that read numbers.
    pub fn range(&self) -> Option<(f64, f64)> {
        match self {
            ScoreParser::KeyValue { min, max, .. } | ScoreParser::Number { min, max } => Some((*min, *max)),
            ScoreParser::Verdict { .. } | ScoreParser::Label { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Numbers in text.

/// A number found in the reply, with what surrounds it.
#[derive(Debug, Clone, Copy)]
struct NumberToken {
    start: usize,
    end: usize,
    value: f64,
    /// One end of a range such as `1-7`, `1 – 7` or `1 to 7`.
    in_range: bool,
    /// The `7` of `6/7` or `6 out of 7`.
    denominator: bool,
    /// The `6` of `6/7` or `6 out of 7`.
    numerator: bool,
}

/// All numbers of `text` (ASCII-lowercased), left to right. A number is an optional `-`,
/// digits, and an optional `.digits`; digits glued to letters (`gpt4`, `4th`) are not numbers.
fn scan_numbers(text: &str) -> Vec<NumberToken> {
    let bytes = text.as_bytes();
    let mut tokens: Vec<NumberToken> = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let glued_before =
            index > 0 && (bytes[index - 1].is_ascii_alphanumeric() || bytes[index - 1] == b'.');
        if !bytes[index].is_ascii_digit() || glued_before {
            index += 1;
            continue;
        }
        let mut start = index;
        // A minus sign counts only when it is not a range dash between two numbers.
        if start > 0 && bytes[start - 1] == b'-' && (start < 2 || !bytes[start - 2].is_ascii_alphanumeric()) {
            start -= 1;
        }
        let mut end = index;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
            end += 1;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
        }
        let glued_after = end < bytes.len() && bytes[end].is_ascii_alphabetic();
        if !glued_after && let Ok(value) = text[start..end].parse::<f64>() {
            tokens.push(NumberToken {
                start,
                end,
                value,
                in_range: false,
                denominator: false,
                numerator: false,
            });
        }
        index = end.max(index + 1);
    }
    for pair in 0..tokens.len().saturating_sub(1) {
        let between = &text[tokens[pair].end..tokens[pair + 1].start];
        let trimmed = between.trim();
        // In `1 -7` the dash was read as the second number's sign: the gap is only spaces.
        let dash_as_sign = trimmed.is_empty() && text[tokens[pair + 1].start..].starts_with('-');
        if matches!(trimmed, "-" | "–" | "—" | "to") || dash_as_sign {
            tokens[pair].in_range = true;
            tokens[pair + 1].in_range = true;
        }
        if matches!(trimmed, "/" | "out of" | "points out of" | "point out of") {
            tokens[pair].numerator = true;
            tokens[pair + 1].denominator = true;
        }
    }
    tokens
}

/// The number token starting exactly at byte `position`, if any.
fn number_at(tokens: &[NumberToken], position: usize) -> Option<NumberToken> {
    tokens.iter().copied().find(|token| token.start == position)
}

fn in_range(value: f64, min: f64, max: f64) -> Option<Score> {
    (min..=max).contains(&value).then_some(Score::Value { value })
}

// ---------------------------------------------------------------------------------------
// Words and decorations.

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Byte offsets where `needle` (lowercase) occurs in `haystack` (lowercased) as a whole
/// word: not glued to letters or digits on either side.
fn word_occurrences(haystack: &str, needle: &str) -> Vec<usize> {
    if needle.is_empty() {
        return Vec::new();
    }
    let bytes = haystack.as_bytes();
    let needle_bytes = needle.as_bytes();
    let starts_with_word = needle_bytes.first().copied().is_some_and(is_word_byte);
    let ends_with_word = needle_bytes.last().copied().is_some_and(is_word_byte);
    haystack
        .match_indices(needle)
        .map(|(start, _)| start)
        .filter(|&start| {
            let end = start + needle.len();
            let clear_before = !starts_with_word || start == 0 || !is_word_byte(bytes[start - 1]);
            let clear_after = !ends_with_word || end >= bytes.len() || !is_word_byte(bytes[end]);
            clear_before && clear_after
        })
        .collect()
}

/// Skips whitespace and markdown or quoting around an answer: `**`, `__`, backticks,
/// quotes, `<`, `[`, `(`, `#`.
fn skip_decoration(text: &str, position: usize) -> usize {
    let rest = &text[position..];
    let skipped = rest
        .find(|character: char| {
            !(character.is_whitespace()
                || matches!(character, '*' | '_' | '`' | '"' | '\'' | '<' | '[' | '(' | '#'))
        })
        .unwrap_or(rest.len());
    position + skipped
}

/// After a key: decoration, optionally one of `optional_words`, decoration, then a separator
/// (`:`, `=`, or one of `word_separators`), then decoration. Returns where the value starts.
fn skip_separator(
    text: &str,
    position: usize,
    optional_words: &[&str],
    word_separators: &[&str],
) -> Option<usize> {
    let mut position = skip_decoration(text, position);
    for word in optional_words {
        if starts_with_word(&text[position..], word) {
            position = skip_decoration(text, position + word.len());
            break;
        }
    }
    position = skip_bracketed_range(text, position);
    let rest = &text[position..];
    let separator_length = if rest.starts_with(':') || rest.starts_with('=') {
        1
    } else {
        word_separators.iter().find(|word| starts_with_word(rest, word)).map(|word| word.len())?
    };
    Some(skip_decoration(text, position + separator_length))
}

/// Skips a scale written between a key and its separator, as in `Toxicity (1-5): 3` or
/// `Relevance [1 to 7] = 6` (the opening bracket is already skipped as decoration).
fn skip_bracketed_range(text: &str, position: usize) -> usize {
    let rest = &text[position..];
    let Some(close) = rest.find([')', ']']) else { return position };
    let inside = &rest[..close];
    let only_a_range = inside.chars().any(|character| character.is_ascii_digit())
        && inside.chars().all(|character| character.is_ascii_digit() || " .-–/tonuf".contains(character));
    if only_a_range { skip_decoration(text, position + close + 1) } else { position }
}

/// Whether `text` starts with `word` followed by a non-word character or the end.
fn starts_with_word(text: &str, word: &str) -> bool {
    text.starts_with(word) && text.as_bytes().get(word.len()).is_none_or(|&byte| !is_word_byte(byte))
}

/// Whether the text after a choice shows the model restating the instructions rather than
/// answering: `"[[A]]" if assistant A is better`, `[[A]] when ...`, `[[C]] for a tie`, or a
/// list of options such as `[[A]], [[B]] or [[C]]` and `<one of [[A]], [[B]]>`.
fn looks_restated(text: &str, position: usize) -> bool {
    let is_closing =
        |character: char| matches!(character, ']' | ')' | '"' | '\'' | '*') || character.is_whitespace();
    let rest = text[position..].trim_start_matches(is_closing);
    if rest.starts_with('>') || rest.starts_with('/') || rest.starts_with("for a tie") {
        return true;
    }
    if let Some(after_comma) = rest.strip_prefix(',') {
        let after_comma = after_comma.trim_start_matches(is_closing);
        if after_comma.starts_with("[[")
            || starts_with_word(after_comma, "or")
            || starts_with_word(after_comma, "and")
        {
            return true;
        }
    }
    ["if", "when", "or"].iter().any(|word| starts_with_word(rest, word))
}

// ---------------------------------------------------------------------------------------
// The parsers.

fn parse_key_value(reply: &str, key: &str, min: f64, max: f64) -> Option<Score> {
    let lower = reply.to_ascii_lowercase();
    let key = key.trim().to_ascii_lowercase();
    let numbers = scan_numbers(&lower);
    let last = word_occurrences(&lower, &key).into_iter().rev().find_map(|key_start| {
        let value_start =
            skip_separator(&lower, key_start + key.len(), &["score", "level", "rating"], &["is"])?;
        number_at(&numbers, value_start).filter(|token| !token.in_range)
    })?;
    in_range(last.value, min, max)
}

fn parse_number(reply: &str, min: f64, max: f64) -> Option<Score> {
    let lower = reply.to_ascii_lowercase();
    let numbers = scan_numbers(&lower);

    let double_bracketed = numbers.iter().rev().find(|token| {
        lower[..token.start].trim_end().ends_with("[[") && lower[token.end..].trim_start().starts_with("]]")
    });
    if let Some(token) = double_bracketed {
        return in_range(token.value, min, max);
    }

    let labelled = ["rating", "score", "grade"]
        .iter()
        .flat_map(|label| word_occurrences(&lower, label).into_iter().map(move |start| start + label.len()))
        .filter_map(|after_label| {
            let value_start = skip_separator(&lower, after_label, &[], &["is", "of"])?;
            number_at(&numbers, value_start).filter(|token| !token.in_range)
        })
        .max_by_key(|token| token.start);
    if let Some(token) = labelled {
        return in_range(token.value, min, max);
    }

    if let Some(token) = numbers.iter().rev().find(|token| token.numerator) {
        return in_range(token.value, min, max);
    }

    let mut bare = numbers.iter().filter(|token| !token.in_range && !token.denominator);
    let first = bare.next()?;
    if bare.all(|token| token.value == first.value) { in_range(first.value, min, max) } else { None }
}

fn parse_verdict(reply: &str, choices: &[String]) -> Option<Score> {
    let lower = reply.to_ascii_lowercase();
    // A choice token: the word starting at `position`, matched against the choices.
    let choice_at = |position: usize| -> Option<&String> {
        let rest = &lower[position..];
        let length = rest.find(|character: char| !character.is_ascii_alphanumeric()).unwrap_or(rest.len());
        if length == 0 {
            return None;
        }
        let word = &rest[..length];
        choices.iter().find(|choice| choice.trim().to_ascii_lowercase() == word)
    };
    let label = |choice: &String| Score::Label { label: choice.clone() };

    let double_bracketed = lower
        .rmatch_indices("[[")
        .filter_map(|(start, _)| {
            let inner_start = start + 2;
            let close = lower[inner_start..].find("]]")? + inner_start;
            let inner = lower[inner_start..close].trim();
            let choice = choices.iter().find(|choice| choice.trim().to_ascii_lowercase() == inner)?;
            (!looks_restated(&lower, close + 2)).then_some(choice)
        })
        .next();
    if let Some(choice) = double_bracketed {
        return Some(label(choice));
    }

    let labelled = ["verdict", "judge", "judgment", "judgement", "winner", "answer", "decision", "choice"]
        .iter()
        .flat_map(|word| word_occurrences(&lower, word).into_iter().map(move |start| start + word.len()))
        .filter_map(|after_label| {
            let value_start = skip_separator(&lower, after_label, &[], &["is"])
                .map(|start| skip_choice_noun(&lower, start))?;
            let choice = choice_at(value_start)?;
            let after_choice = value_start + choice.trim().len();
            (!looks_restated(&lower, after_choice)).then_some((value_start, choice))
        })
        .max_by_key(|(start, _)| *start);
    if let Some((_, choice)) = labelled {
        return Some(label(choice));
    }

    let named_better = ["assistant", "response", "reply", "option"]
        .iter()
        .flat_map(|noun| {
            word_occurrences(&lower, noun).into_iter().map(move |start| (start, start + noun.len()))
        })
        .filter_map(|(noun_start, after_noun)| {
            let choice_start = skip_decoration(&lower, after_noun);
            let choice = choice_at(choice_start)?;
            let after_choice = skip_decoration(&lower, choice_start + choice.trim().len());
            let rest = &lower[after_choice..];
            let says_better =
                ["is better", "wins", "is the better", "was better"].iter().any(|p| rest.starts_with(p));
            let restated = lower[..noun_start].trim_end().ends_with("if");
            (says_better && !restated).then_some((noun_start, choice))
        })
        .max_by_key(|(start, _)| *start);
    named_better.map(|(_, choice)| label(choice))
}

/// Skips `assistant`, `response`, `reply` or `option` before a choice (`Verdict: Assistant B`).
fn skip_choice_noun(text: &str, position: usize) -> usize {
    for noun in ["assistant", "response", "reply", "option"] {
        if starts_with_word(&text[position..], noun) {
            return skip_decoration(text, position + noun.len());
        }
    }
    position
}

fn parse_label(reply: &str, labels: &[String]) -> Option<Score> {
    let lower = reply.to_ascii_lowercase();
    let mut matches: Vec<(usize, usize, &String)> = labels
        .iter()
        .flat_map(|label| {
            let needle = label.trim().to_ascii_lowercase();
            word_occurrences(&lower, &needle)
                .into_iter()
                .map(move |start| (start, start + needle.len(), label))
        })
        .collect();
    // A match inside a longer label's match (`toxic` in `not toxic`) is part of that label.
    let spans: Vec<(usize, usize)> = matches.iter().map(|(start, end, _)| (*start, *end)).collect();
    matches.retain(|(start, end, _)| {
        !spans.iter().any(|(other_start, other_end)| {
            other_start <= start && end <= other_end && (other_end - other_start) > (end - start)
        })
    });
    matches
        .into_iter()
        .max_by_key(|(start, _, _)| *start)
        .map(|(_, _, label)| Score::Label { label: label.clone() })
}
