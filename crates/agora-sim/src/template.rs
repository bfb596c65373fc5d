//! Prompt templates with `{name}` placeholders, in the style of the origins' prompt files
//! (e.g. ESConv-SRA's pairwise judge prompt), so such a file works as it is.
//!
//! The syntax is deliberately tolerant, because prompt files are prose written by people,
//! often with JSON examples or stray braces in them:
//! - `{identifier}` (ASCII letter or `_`, then letters, digits or `_`) is a placeholder;
//! - `{{` and `}}` are a literal `{` and `}`;
//! - any other `{` or `}` (`{"score": 3}`, `{ spaced }`, `{}`) is literal text.
//!
//! A template serializes as its source text, so an experiment file holds it as a plain string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What can go wrong when checking or filling a template. Each error names the placeholder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template uses placeholder `{{{name}}}` but no value was given for it")]
    MissingValue { name: String },
    #[error("the template uses unknown placeholder `{{{name}}}`; allowed here: {allowed}")]
    UnknownPlaceholder { name: String, allowed: String },
}

/// A parsed prompt template. Equality compares the source text.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Placeholder(String),
}

impl Template {
    /// Parses a template. Parsing is tolerant (see the module docs), so every text parses
    /// today; the `Result` keeps room for stricter syntax without changing callers.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Ok(Template { source: text.to_string(), pieces: split_pieces(text) })
    }

    /// A template from text built into agora, where a parse error would be a bug.
    pub(crate) fn builtin(text: &'static str) -> Template {
        Template { source: text.to_string(), pieces: split_pieces(text) }
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Placeholder names in order of first use, each once.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for piece in &self.pieces {
            if let Piece::Placeholder(name) = piece
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// Whether the template uses the placeholder `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.pieces.iter().any(|piece| matches!(piece, Piece::Placeholder(used) if used == name))
    }

    /// Checks that every placeholder is one of `allowed`; the error names the first
    /// unknown one and lists the allowed names.
    pub fn check_allowed(&self, allowed: &[&str]) -> Result<(), TemplateError> {
        match self.placeholders().into_iter().find(|name| !allowed.contains(name)) {
            None => Ok(()),
            Some(unknown) => Err(TemplateError::UnknownPlaceholder {
                name: unknown.to_string(),
                allowed: allowed.iter().map(|name| format!("{{{name}}}")).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Replaces every placeholder with its value. Values for names the template does not
    /// use are ignored (one value list serves several templates); a placeholder without
    /// a value is an error naming it. When a name is given twice, the first value wins.
    pub fn fill(&self, values: &[(&str, &str)]) -> Result<String, TemplateError> {
        let mut filled = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => filled.push_str(text),
                Piece::Placeholder(name) => {
                    let value = values
                        .iter()
                        .find(|(candidate, _)| candidate == name)
                        .map(|(_, value)| *value)
                        .ok_or_else(|| TemplateError::MissingValue { name: name.clone() })?;
                    filled.push_str(value);
                }
            }
        }
        Ok(filled)
    }
}

/// Splits template text into literal runs and placeholders, resolving `{{` and `}}`.
fn split_pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(character) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if character == '{'
            && let Some((name, after)) = placeholder_at(rest)
        {
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Placeholder(name.to_string()));
            rest = after;
        } else {
            literal.push(character);
            rest = &rest[character.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    pieces
}

/// When `text` starts with `{identifier}`, returns the identifier and the text after `}`.
fn placeholder_at(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    let mut characters = name.chars();
    let first = characters.next()?;
    let is_identifier = (first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_');
    is_identifier.then(|| (name, &inner[end + 1..]))
}

impl PartialEq for Template {
    fn eq(&self, other: &Template) -> bool {
        self.source == other.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`, checks its placeholders, and fills it from `values`.
    fn check(
        text: &str,
        placeholders: &[&str],
        values: &[(&str, &str)],
        expected: Result<&str, TemplateError>,
    ) {
        let template = Template::parse(text).unwrap();
        assert_eq!(template.placeholders(), placeholders, "placeholders of {text:?}");
        assert_eq!(template.fill(values), expected.map(str::to_string), "{text:?}");
    }

    fn missing(name: &str) -> TemplateError {
        TemplateError::MissingValue { name: name.to_string() }
    }

    #[test]
    fn placeholders_are_filled() {
        check("Hello {name}!", &["name"], &[("name", "Ada")], Ok("Hello Ada!"));
        check("{a}{b}{a}", &["a", "b"], &[("b", "2"), ("a", "1")], Ok("121"));
        check(
            "{_x1} and {snake_case}",
            &["_x1", "snake_case"],
            &[("_x1", "A"), ("snake_case", "B")],
            Ok("A and B"),
        );
        check("no placeholders", &[], &[("unused", "value")], Ok("no placeholders"));
        check("", &[], &[], Ok(""));
        check(
            "{name} first value wins",
            &["name"],
            &[("name", "one"), ("name", "two")],
            Ok("one first value wins"),
        );
    }

    #[test]
    fn braces_that_are_not_placeholders_stay_literal() {
        check(r#"Answer as {"score": 3}"#, &[], &[], Ok(r#"Answer as {"score": 3}"#));
        check("{ spaced } {} {1abc} {a-b}", &[], &[], Ok("{ spaced } {} {1abc} {a-b}"));
        check("open { never closed", &[], &[], Ok("open { never closed"));
        check("{unclosed {name}", &["name"], &[("name", "x")], Ok("{unclosed x"));
        check("lone } brace", &[], &[], Ok("lone } brace"));
        check("{é}", &[], &[], Ok("{é}"));
    }

    #[test]
    fn doubled_braces_escape() {
        check("{{name}} is {name}", &["name"], &[("name", "Bo")], Ok("{name} is Bo"));
        check("{{{name}}}", &["name"], &[("name", "Bo")], Ok("{Bo}"));
        check("}}{{", &[], &[], Ok("}{"));
    }

    #[test]
    fn values_are_not_re_expanded() {
        check("{a}", &["a"], &[("a", "{b}"), ("b", "no")], Ok("{b}"));
    }

    #[test]
    fn a_missing_value_names_the_placeholder() {
        check("Hi {first} {last}", &["first", "last"], &[("first", "Ada")], Err(missing("last")));
        let message = Template::parse("{who}").unwrap().fill(&[]).unwrap_err().to_string();
        assert!(message.contains("`{who}`"), "{message}");
    }

    #[test]
    fn unknown_placeholders_are_named() {
        let template = Template::parse("{reply} {typo}").unwrap();
        assert_eq!(
            template.check_allowed(&["reply", "context"]).unwrap_err(),
            TemplateError::UnknownPlaceholder { name: "typo".into(), allowed: "{reply}, {context}".into() }
        );
        assert!(template.check_allowed(&["reply", "typo"]).is_ok());
        assert!(template.uses("typo") && !template.uses("context"));
    }

    #[test]
    fn serde_is_the_plain_source_string() {
        let template = Template::parse("Rate {{this}}: {reply}").unwrap();
        let json = serde_json::to_string(&template).unwrap();
        assert_eq!(json, r#""Rate {{this}}: {reply}""#);
        let back: Template = serde_json::from_str(&json).unwrap();
        assert_eq!(back, template);
        assert_eq!(back.placeholders(), ["reply"]);
        assert_eq!(back.to_string(), "Rate {{this}}: {reply}");
    }

    #[test]
    fn the_origin_pairwise_prompt_works_as_it_is() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/esconv-sra/pairwise_judge_prompt.txt");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipping: {} is absent", path.display());
            return;
        };
        let template = Template::parse(&text).unwrap();
        assert_eq!(
            template.placeholders(),
            ["strategy_instructions", "conversation_history", "assistant_a_resp", "assistant_b_resp"]
        );
        let filled = template
            .fill(&[
                ("strategy_instructions", "STRATEGY"),
                ("conversation_history", "HISTORY"),
                ("assistant_a_resp", "REPLY-A"),
                ("assistant_b_resp", "REPLY-B"),
            ])
            .unwrap();
        assert!(filled.contains("\"JUDGE: [[A]]\" if assistant A is better"));
        assert!(filled.contains("Provided Strategy:\n\nSTRATEGY\n"));
        assert!(filled.ends_with("REPLY-B\n\n<|The End of Assistant B's Response|>"));
    }
}
