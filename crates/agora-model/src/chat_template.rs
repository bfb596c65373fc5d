//! Chat templates rendered with minijinja exactly as transformers' `apply_chat_template`
//! renders them with Jinja2 (same whitespace control, globals and `tojson`).
//!
//! What transformers does, and so what this does: `trim_blocks` and `lstrip_blocks` on, no
//! auto-escaping, no trailing-newline keeping; the template sees `messages`,
//! `add_generation_prompt`, `tools` and `documents` (none unless given), the tokenizer's
//! special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`) and any extra
//! variables, which win over the special tokens; `raise_exception(message)` aborts the render;
//! `strftime_now(format)` gives the current time; `tojson` is Python's `json.dumps` (no HTML
//! escaping, `ensure_ascii=False`, `", "`/`": "` separators, `indent`); Python string and dict
//! methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`...) work.
//! Not supported: the `{% generation %}` tag (used for assistant masks when training).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// Plain ChatML, the template agora falls back to when a model brings none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// What [`ChatTemplate::is_fallback`] callers should tell the user.
pub const FALLBACK_NOTICE: &str =
    "the model has no chat template; using ChatML (<|im_start|>role ... <|im_end|>)";

const TEMPLATE_NAME: &str = "chat_template";
/// Marks errors raised by the template itself, so they read as the template's refusal.
const RAISED_PREFIX: &str = "raise_exception: ";

/// One turn of a conversation, as chat templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// A compiled chat template with the variables it renders with.
pub struct ChatTemplate {
    environment: Environment<'static>,
    source: String,
    /// Special tokens first, then extra variables (which may overwrite them, as in HF).
    variables: BTreeMap<String, Value>,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("variables", &self.variables)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, with its line.
    pub fn new(source: impl Into<String>) -> Result<ChatTemplate> {
        let source = source.into();
        let mut environment = Environment::new();
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment.set_keep_trailing_newline(false);
        environment.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", raise_exception);
        environment.add_function("strftime_now", strftime_now);
        environment.add_filter("tojson", python_tojson);
        environment.set_formatter(python_formatter);
        environment.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|error| {
            ModelError::Text(format!("chat template does not compile: {}", describe(&error)))
        })?;
        Ok(ChatTemplate { environment, source, variables: BTreeMap::new(), is_fallback: false })
    }

    /// The built-in ChatML template (see [`FALLBACK_NOTICE`]).
    pub fn chatml_fallback() -> ChatTemplate {
        match ChatTemplate::new(CHATML_TEMPLATE) {
            Ok(mut template) => {
                template.is_fallback = true;
                template
            }
            // The constant is tested to compile; reaching this is a bug in this file.
            Err(error) => panic!("built-in ChatML template: {error}"),
        }
    }

    /// Sets `bos_token`, `eos_token`, `unk_token`, `pad_token` (each only when known, as
    /// transformers passes only the tokens a tokenizer has).
    pub fn with_special_tokens(
        mut self,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        unk_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> ChatTemplate {
        for (name, token) in [
            ("bos_token", bos_token),
            ("eos_token", eos_token),
            ("unk_token", unk_token),
            ("pad_token", pad_token),
        ] {
            match token {
                Some(token) => self.variables.insert(name.to_owned(), Value::from(token)),
                None => self.variables.remove(name),
            };
        }
        self
    }

    /// An extra variable the template can read (`date_string`, `tools`, `enable_thinking`...),
    /// like a keyword argument of `apply_chat_template`.
    pub fn with_variable(mut self, name: impl Into<String>, value: &serde_json::Value) -> ChatTemplate {
        self.set_variable(name, value);
        self
    }

    pub fn set_variable(&mut self, name: impl Into<String>, value: &serde_json::Value) {
        self.variables.insert(name.into(), Value::from_serialize(value));
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// True for the built-in ChatML used because the model has no template of its own.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// The conversation as one prompt string; with `add_generation_prompt` it ends with the
    /// header of an assistant turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`render`](Self::render) with extra variables for this call only.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra_variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        context.insert("messages".to_owned(), Value::from_serialize(messages));
        context.insert("add_generation_prompt".to_owned(), Value::from(add_generation_prompt));
        // transformers always passes these, as None when unused: `tools is defined` holds.
        context.insert("tools".to_owned(), Value::from(()));
        context.insert("documents".to_owned(), Value::from(()));
        for (name, value) in &self.variables {
            context.insert(name.clone(), value.clone());
        }
        for (name, value) in extra_variables {
            context.insert(name.clone(), Value::from_serialize(value));
        }
        let template = self
            .environment
            .get_template(TEMPLATE_NAME)
            .map_err(|error| ModelError::Text(format!("chat template: {}", describe(&error))))?;
        template.render(context).map_err(|error| {
            let raised = error.detail().and_then(|detail| detail.strip_prefix(RAISED_PREFIX));
            match raised {
                Some(message) => {
                    ModelError::Text(format!("the chat template refused the conversation: {message}"))
                }
                None => ModelError::Text(format!("chat template failed to render: {}", describe(&error))),
            }
        })
    }
}

/// Prints `{{ value }}` as Jinja2 does, which is Python's `str()`: `True`, `None`, `1.0`,
/// `['a', None]`, `{'k': 1}` (minijinja would print `true`, `none`, `1`, `["a", none]`).
fn python_formatter(
    out: &mut minijinja::Output<'_>,
    _state: &minijinja::State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    let text = match value.kind() {
        ValueKind::String => {
            return out.write_str(value.as_str().unwrap_or_default()).map_err(minijinja::Error::from);
        }
        ValueKind::Undefined => return Ok(()),
        _ => python_str(value, false)?,
    };
    out.write_str(&text).map_err(minijinja::Error::from)
}

/// Python's `str()` (top level) or `repr()` (inside containers) of a template value.
fn python_str(value: &Value, nested: bool) -> std::result::Result<String, minijinja::Error> {
    Ok(match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".to_owned(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(number) if number.is_nan() => "nan".to_owned(),
            Ok(number) if number.is_infinite() => if number > 0.0 { "inf" } else { "-inf" }.to_owned(),
            Ok(number) => python_float_repr(number),
            Err(_) => value.to_string(),
        },
        ValueKind::String if nested => python_string_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items = value
                .try_iter()?
                .map(|item| python_str(&item, true))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push(format!("{}: {}", python_str(&key, true)?, python_str(&item, true)?));
            }
            format!("{{{}}}", entries.join(", "))
        }
        _ => value.to_string(),
    })
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote.
fn python_string_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            quoted if quoted == quote => {
                out.push('\\');
                out.push(quoted);
            }
            control if (control as u32) < 0x20 || control as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", control as u32);
            }
            plain => out.push(plain),
        }
    }
    out.push(quote);
    out
}

/// The error with its cause chain and template line, on one line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED_PREFIX}{message}")))
}

/// Python's `datetime.now().strftime(format)`, in UTC (agora reads no time-zone database).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    strftime_utc(&format, seconds as i64)
        .map_err(|message| minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// The directives chat templates use (`%d %b %Y`, `%Y-%m-%d`, `%B`, `%A`, `%H:%M:%S`...).
pub(crate) fn strftime_utc(format: &str, unix_seconds: i64) -> std::result::Result<String, String> {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = agora_core::time::civil_from_days(days);
    let month_name = MONTHS[(month - 1) as usize];
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = WEEKDAYS[(days + 3).rem_euclid(7) as usize];
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(character) = chars.next() {
        if character != '%' {
            out.push(character);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match directive {
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            'm' => write!(out, "{month:02}"),
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'B' => write!(out, "{month_name}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'A' => write!(out, "{weekday}"),
            'a' => write!(out, "{}", &weekday[..3]),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{:02}", (hour + 11) % 12 + 1),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'j' => write!(out, "{day_of_year:03}"),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            '%' => write!(out, "%"),
            other => return Err(format!("strftime_now: unsupported directive %{other}")),
        };
    }
    Ok(out)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// How `json.dumps` lays out its output.
struct JsonStyle {
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, keyword arguments only.
fn python_tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(indent) if indent.is_none() => None,
        Some(indent) => match (indent.as_i64(), indent.as_str()) {
            (Some(width), _) => Some(" ".repeat(width.max(0) as usize)),
            (None, Some(text)) => Some(text.to_owned()),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ));
            }
        },
    };
    // Python's defaults: ", " without indent, "," with it (no trailing spaces on lines).
    let (mut item_separator, mut key_separator) =
        (if indent.is_some() { "," } else { ", " }.to_owned(), ": ".to_owned());
    if let Some(separators) = kwargs.get::<Option<Vec<String>>>("separators")? {
        match separators.as_slice() {
            [item, key] => (item_separator, key_separator) = (item.clone(), key.clone()),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair",
                ));
            }
        }
    }
    kwargs.assert_all_used()?;
    let style = JsonStyle { indent, item_separator, key_separator, sort_keys, ensure_ascii };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_json_number(out, value),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|left, right| left.0.cmp(&right.0));
            }
            write_container(out, '{', '}', entries.len(), style, depth, |out, index| {
                let (key, item) = &entries[index];
                write_json_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_json(out, item, style, depth + 1)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), style, depth, |out, index| {
                write_json(out, &items[index], style, depth + 1)
            })?;
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {other} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    count: usize,
    style: &JsonStyle,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if count == 0 {
        out.push(close);
        return Ok(());
    }
    for index in 0..count {
        if index > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(indent) = &style.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, index)?;
    }
    if let Some(indent) = &style.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings (`1` -> "1", `True` -> "true", `None` -> "null").
fn json_key(key: &Value) -> std::result::Result<String, minijinja::Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None | ValueKind::Undefined => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => {
            let mut text = String::new();
            write_json_number(&mut text, key);
            Ok(text)
        }
        other => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, not {other}"),
        )),
    }
}

fn write_json_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(number) => out.push_str(&python_float_repr(number)),
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
pub(crate) fn python_float_repr(number: f64) -> String {
    if number.is_nan() {
        return "NaN".to_owned();
    }
    if number.is_infinite() {
        return if number > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if number == 0.0 {
        return if number.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    let scientific = format!("{:e}", number.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if number < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let text = if exponent >= 0 {
            let integer_digits = exponent as usize + 1;
            if digits.len() <= integer_digits {
                format!("{digits}{}.0", "0".repeat(integer_digits - digits.len()))
            } else {
                format!("{}.{}", &digits[..integer_digits], &digits[integer_digits..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
        };
        format!("{sign}{text}")
    } else {
        let fraction = if digits.len() > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{}{fraction}e{exponent_sign}{:02}", &digits[..1], exponent.abs())
    }
}

/// A JSON string as Python writes it: only `"`, `\` and control characters escaped (and,
/// with `ensure_ascii`, everything outside ASCII as `\uXXXX`, in surrogate pairs when needed).
fn write_json_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            control if (control as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", control as u32);
            }
            wide if ensure_ascii && !wide.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in wide.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            plain => out.push(plain),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.1, "0.1"),
            (2.675, "2.675"),
        ];
        for (number, expected) in cases {
            assert_eq!(python_float_repr(number), expected, "{number}");
        }
    }

    #[test]
    fn strftime_utc_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let seconds = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime_utc("%d %b %Y", seconds).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%A %B %e, %y %H:%M:%S %p %j %%", seconds).unwrap(),
            "Friday July 26, 24 13:05:09 PM 208 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        assert!(strftime_utc("%Q", 0).is_err());
    }

    #[test]
    fn fallback_template_compiles() {
        assert!(ChatTemplate::chatml_fallback().is_fallback());
    }
}
