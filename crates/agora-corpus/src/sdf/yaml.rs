//! The small part of YAML the SDF's `run_config.yml` uses: nested block mappings of
//! scalars, `#` comments, single- and double-quoted strings. Enough to read the 2026
//! config without a YAML dependency; anything else is refused with its line.

use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::{CorpusError, Location};

/// One meaningful line: its number, its indentation, and its content without comment.
struct YamlLine<'a> {
    number: u64,
    indent: usize,
    content: &'a str,
}

/// Parses a document that is a block mapping into a JSON object.
pub(super) fn parse_block_mapping(text: &str, path: &Path) -> Result<Map<String, Value>, CorpusError> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index as u64 + 1;
        let content = strip_comment(raw).trim_end();
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start_matches(' ').len();
        if content[indent..].starts_with('\t') {
            return Err(invalid(path, number, "tabs are not allowed in YAML indentation"));
        }
        lines.push(YamlLine { number, indent, content: &content[indent..] });
    }
    let mut position = 0;
    let indent = lines.first().map_or(0, |line| line.indent);
    let mapping = parse_mapping(&lines, &mut position, indent, path)?;
    if let Some(line) = lines.get(position) {
        return Err(invalid(path, line.number, "unexpected indentation"));
    }
    Ok(mapping)
}

fn parse_mapping(
    lines: &[YamlLine<'_>],
    position: &mut usize,
    indent: usize,
    path: &Path,
) -> Result<Map<String, Value>, CorpusError> {
    let mut mapping = Map::new();
    while let Some(line) = lines.get(*position) {
        if line.indent < indent {
            break;
        }
        if line.indent > indent {
            return Err(invalid(path, line.number, "unexpected indentation"));
        }
        if line.content == "-" || line.content.starts_with("- ") {
            return Err(invalid(
                path,
                line.number,
                "YAML lists are not supported here (only nested `key: value` mappings)",
            ));
        }
        let Some((key, rest)) = split_key(line.content) else {
            return Err(invalid(path, line.number, "expected `key: value`"));
        };
        *position += 1;
        let value = if rest.is_empty() {
            match lines.get(*position) {
                Some(next) if next.indent > indent => {
                    Value::Object(parse_mapping(lines, position, next.indent, path)?)
                }
                _ => Value::Null,
            }
        } else {
            parse_scalar(rest, path, line.number)?
        };
        if mapping.insert(key.to_string(), value).is_some() {
            return Err(invalid(path, line.number, &format!("key `{key}` appears twice")));
        }
    }
    Ok(mapping)
}

/// Splits `key: value` (or `key:`) at the first `: ` outside quotes.
fn split_key(content: &str) -> Option<(&str, &str)> {
    if let Some(key) = content.strip_suffix(':')
        && !key.contains(": ")
    {
        return Some((key.trim(), ""));
    }
    let (key, rest) = content.split_once(": ")?;
    if key.starts_with(['"', '\'']) {
        return None;
    }
    Some((key.trim(), rest.trim()))
}

fn parse_scalar(text: &str, path: &Path, number: u64) -> Result<Value, CorpusError> {
    if let Some(inner) = text.strip_prefix('"') {
        return parse_double_quoted(inner, path, number).map(Value::String);
    }
    if let Some(inner) = text.strip_prefix('\'') {
        let Some(inner) = inner.strip_suffix('\'') else {
            return Err(invalid(path, number, "unterminated single-quoted string"));
        };
        return Ok(Value::String(inner.replace("''", "'")));
    }
    if text.starts_with(['[', '{', '&', '*', '|', '>', '!']) {
        return Err(invalid(
            path,
            number,
            "flow collections, anchors, tags and block scalars are not supported here",
        ));
    }
    Ok(match text {
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "null" | "Null" | "NULL" | "~" => Value::Null,
        _ => {
            if let Ok(integer) = text.parse::<i64>() {
                Value::Number(integer.into())
            } else if let Some(float) = text.parse::<f64>().ok().and_then(Number::from_f64) {
                Value::Number(float)
            } else {
                Value::String(text.to_string())
            }
        }
    })
}

fn parse_double_quoted(inner: &str, path: &Path, number: u64) -> Result<String, CorpusError> {
    let mut text = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '"' => {
                if characters.as_str().trim().is_empty() {
                    return Ok(text);
                }
                return Err(invalid(path, number, "text after a closing quote"));
            }
            '\\' => match characters.next() {
                Some('n') => text.push('\n'),
                Some('t') => text.push('\t'),
                Some('"') => text.push('"'),
                Some('\\') => text.push('\\'),
                Some('/') => text.push('/'),
                _ => {
                    return Err(invalid(path, number, "unsupported escape in a quoted string"));
                }
            },
            other => text.push(other),
        }
    }
    Err(invalid(path, number, "unterminated double-quoted string"))
}

/// Cuts a `#` comment that starts the line or follows a space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut previous = ' ';
    for (offset, character) in line.char_indices() {
        match quote {
            // Inside double quotes a backslash protects the next character.
            Some(_) if escaped => escaped = false,
            Some('"') if character == '\\' => escaped = true,
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None if (character == '"' || character == '\'') && matches!(previous, ' ' | ':') => {
                quote = Some(character);
            }
            None if character == '#' && previous.is_whitespace() => return &line[..offset],
            None => {}
        }
        previous = character;
    }
    line
}

fn invalid(path: &Path, number: u64, message: &str) -> CorpusError {
    CorpusError::invalid(Location::line(path, number), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: serde_json::Value) {
        let parsed = parse_block_mapping(text, Path::new("config.yml")).unwrap();
        assert_eq!(Value::Object(parsed), expected);
    }

    fn check_error(text: &str, expected: &str) {
        let error = parse_block_mapping(text, Path::new("config.yml")).unwrap_err().to_string();
        assert_eq!(error, expected);
    }

    #[test]
    fn nested_mappings_scalars_and_comments() {
        check(
            "a:\n  b: 1 # one\n  c: \"x # not a comment\"\n\n  d:\n    e: 0.4\n    f: true\nname: 'it''s' \n",
            serde_json::json!({"a": {"b": 1, "c": "x # not a comment", "d": {"e": 0.4, "f": true}}, "name": "it's"}),
        );
        check("path: /a/b.csv\nempty:\n", serde_json::json!({"path": "/a/b.csv", "empty": null}));
        // An escaped quote does not end the string, so the `#` after it is text.
        check("say: \"a \\\" # b\" # comment\n", serde_json::json!({"say": "a \" # b"}));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        check_error(
            "a:\n  - 1\n",
            "config.yml:2: YAML lists are not supported here (only nested `key: value` mappings)",
        );
        check_error(
            "a: [1, 2]\n",
            "config.yml:1: flow collections, anchors, tags and block scalars are not supported here",
        );
        check_error("a: 1\n    b: 2\n", "config.yml:2: unexpected indentation");
        check_error("a: \"open\n", "config.yml:1: unterminated double-quoted string");
        check_error("a: 1\na: 2\n", "config.yml:2: key `a` appears twice");
        check_error("just text\n", "config.yml:1: expected `key: value`");
    }
}
