//! thu-coai ESConv.json: support strategies normalised, survey scores, feedback.
//!
//! The file is one JSON array of conversations. It is read as a stream: each element is
//! parsed on its own, turned into a [`Conversation`] and handed to the sink before the
//! next one is read, so memory holds one conversation at a time whatever the file size.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::Path;

use agora_core::{Conversation, Meta, Participant, Role, Source, Strategy, Turn, TurnLabels, json_kind};
use serde::Deserializer as _;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde_json::Value;

use crate::{CorpusError, ImportOptions, ImportReport, Location, Sink, input};

const CORPUS: &str = "esconv";
const SEEKER: &str = "seeker";
const SUPPORTER: &str = "supporter";

/// Survey answers every ESConv conversation is expected to have; a missing one is counted.
const EXPECTED_SURVEY_FIELDS: [(&str, &[&str]); 2] = [
    (SEEKER, &["initial_emotion_intensity", "empathy", "relevance", "final_emotion_intensity"]),
    (SUPPORTER, &["relevance"]),
];

/// Imports an ESConv.json file (plain, gzip or bzip2), one conversation per array element.
pub fn import(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    let mut reader = CountingReader { inner: input::open(path)?, bytes: 0 };
    let mut state = StreamState {
        path,
        options,
        sink,
        report: ImportReport::default(),
        next_index: 0,
        position: StreamPosition::NotStarted,
        failure: None,
    };
    // serde_json reads byte by byte; std's `BufReader` serves those from its buffer
    // without a call per byte, which the boxed reader from `input::open` cannot.
    let buffered = BufReader::with_capacity(1 << 16, &mut reader);
    let mut deserializer = serde_json::Deserializer::from_reader(buffered);
    let outcome = deserializer
        .deserialize_seq(ConversationsVisitor { state: &mut state })
        .and_then(|()| deserializer.end());
    drop(deserializer);
    // A failure of our own (bad record, sink error) aborted the parse through a
    // placeholder serde error: report the real one.
    if let Some(failure) = state.failure.take() {
        return Err(failure);
    }
    if let Err(error) = outcome {
        return Err(stream_error(path, &state, reader.bytes, &error));
    }
    state.report.bytes = reader.bytes;
    Ok(state.report)
}

/// Counts the (decompressed) bytes the JSON parser consumes, for the report.
struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.bytes += read as u64;
        Ok(read)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamPosition {
    NotStarted,
    ReadingElements,
    Finished,
}

struct StreamState<'a, 'sink> {
    path: &'a Path,
    options: &'a ImportOptions,
    sink: &'a mut Sink<'sink>,
    report: ImportReport,
    /// 0-based position of the conversation being read.
    next_index: u64,
    position: StreamPosition,
    /// The error that stopped the stream, when it is ours rather than the parser's.
    failure: Option<CorpusError>,
}

struct ConversationsVisitor<'state, 'a, 'sink> {
    state: &'state mut StreamState<'a, 'sink>,
}

impl<'de> Visitor<'de> for ConversationsVisitor<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON array of ESConv conversations")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.state;
        state.position = StreamPosition::ReadingElements;
        while let Some(record) = seq.next_element::<Value>()? {
            let index = state.next_index;
            if let Err(failure) = state.accept(index, &record) {
                state.failure = Some(failure);
                return Err(A::Error::custom("import stopped"));
            }
            state.next_index += 1;
        }
        state.position = StreamPosition::Finished;
        Ok(())
    }
}

impl StreamState<'_, '_> {
    /// Converts one array element and delivers it. Bad records are skipped (and counted)
    /// with `keep_going`; sink errors always stop the import.
    fn accept(&mut self, index: u64, record: &Value) -> Result<(), CorpusError> {
        let place = Place { path: self.path, index };
        let mut notes = ImportReport::default();
        match convert(&place, record, self.options, &mut notes) {
            Ok(conversation) => {
                self.report.merge(notes);
                self.report.conversations += 1;
                self.report.turns += conversation.turns.len() as u64;
                (self.sink)(conversation)
            }
            // Notes of a skipped record are dropped with it: they would describe turns
            // that never reached the sink.
            Err(error) => self.report.skip_or_fail(self.options.keep_going, error),
        }
    }
}

/// Turns a serde_json parse error into a one-line error naming the line and conversation.
fn stream_error(
    path: &Path,
    state: &StreamState<'_, '_>,
    bytes_read: u64,
    error: &serde_json::Error,
) -> CorpusError {
    if let Some(kind) = error.io_error_kind() {
        return CorpusError::io(path, io::Error::new(kind, error.to_string()));
    }
    if bytes_read == 0 {
        return CorpusError::invalid(Location::file(path), "empty file: no conversations");
    }
    // serde_json appends " at line L column C"; the line goes into the location instead.
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let mut message = full.strip_suffix(&position).unwrap_or(&full).to_string();
    if message == "invalid unicode code point" {
        message = "invalid UTF-8 (or an invalid \\u escape) in a string".to_string();
    }
    let mut location = Location::line(path, error.line() as u64);
    match state.position {
        StreamPosition::NotStarted => {}
        StreamPosition::ReadingElements => {
            location = location.with_record(format!("conversation {}", state.next_index));
        }
        StreamPosition::Finished => {
            message = format!("after the array of conversations: {message}");
        }
    }
    CorpusError::invalid(location, format!("{message} (column {})", error.column()))
}

/// Where a conversation sits in the file, to name it in errors.
struct Place<'a> {
    path: &'a Path,
    index: u64,
}

impl Place<'_> {
    fn location(&self) -> Location {
        Location::file(self.path).with_record(format!("conversation {}", self.index))
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> CorpusError {
        CorpusError::invalid(self.location().with_field(field), message)
    }
}

fn required_str<'v>(
    place: &Place<'_>,
    object: &'v Meta,
    key: &str,
    field: &str,
) -> Result<&'v str, CorpusError> {
    match object.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(place.error(field, format!("expected a string, found {}", json_kind(other)))),
        None => Err(place.error(field, "missing field")),
    }
}

/// One element of `dialog`, read and normalised but not yet merged.
struct Message {
    speaker: &'static str,
    role: Role,
    text: String,
    strategy: Option<Strategy>,
    feedback: Option<String>,
    /// Annotation keys other than `strategy` and `feedback`, kept as written.
    extra: Meta,
}

fn convert(
    place: &Place<'_>,
    record: &Value,
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Conversation, CorpusError> {
    let Value::Object(object) = record else {
        return Err(CorpusError::invalid(
            place.location(),
            format!("expected an object, found {}", json_kind(record)),
        ));
    };
    let original_id = conversation_id(place, object)?;
    let Some(dialog) = object.get("dialog") else {
        return Err(place.error("dialog", "missing field"));
    };
    let Value::Array(dialog) = dialog else {
        return Err(place.error("dialog", format!("expected a list, found {}", json_kind(dialog))));
    };
    let mut messages = Vec::with_capacity(dialog.len());
    for (message_index, message) in dialog.iter().enumerate() {
        messages.push(read_message(place, message_index, message, report)?);
    }
    let turns = build_turns(messages, options.merge_consecutive, report);
    Ok(Conversation {
        id: Conversation::make_id(CORPUS, &original_id),
        source: Source { corpus: CORPUS.to_string(), original_id },
        participants: vec![
            Participant { name: SEEKER.to_string(), role: Role::User, persona: None },
            Participant { name: SUPPORTER.to_string(), role: Role::Assistant, persona: None },
        ],
        turns,
        meta: conversation_meta(object, report),
    })
}

/// The record's own `id` / `conv_id` when it has one, else its position in the file.
fn conversation_id(place: &Place<'_>, object: &Meta) -> Result<String, CorpusError> {
    for key in ["id", "conv_id"] {
        match object.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) if !text.trim().is_empty() => {
                return Ok(text.trim().to_string());
            }
            Some(Value::Number(number)) => return Ok(number.to_string()),
            Some(other) => {
                return Err(place.error(
                    key,
                    format!("expected a non-empty string or a number, found {}", json_kind(other)),
                ));
            }
        }
    }
    Ok(place.index.to_string())
}

/// Every top-level field except `dialog` and the id goes to the meta, with the survey
/// scores turned into numbers; nothing of the record is dropped.
fn conversation_meta(object: &Meta, report: &mut ImportReport) -> Meta {
    let mut meta = Meta::new();
    for (key, value) in object {
        match key.as_str() {
            "dialog" | "id" | "conv_id" => {}
            "survey_score" => {
                meta.insert(key.clone(), normalise_survey(value, report));
            }
            _ => {
                meta.insert(key.clone(), value.clone());
            }
        }
    }
    if !object.contains_key("survey_score") {
        report.note("survey_score missing", 1);
    }
    meta
}

/// Survey answers are strings in ESConv.json ("4"); numbers where they parse, the raw
/// string (counted) otherwise.
fn normalise_survey(value: &Value, report: &mut ImportReport) -> Value {
    let Value::Object(sides) = value else {
        report.note("survey_score not an object (kept as written)", 1);
        return value.clone();
    };
    let mut normalised = Meta::new();
    for (side, answers) in sides {
        let Value::Object(answers) = answers else {
            report.note(format!("survey_score.{side} not an object (kept as written)"), 1);
            normalised.insert(side.clone(), answers.clone());
            continue;
        };
        let mut side_normalised = Meta::new();
        for (name, answer) in answers {
            let number = match answer {
                Value::String(text) => parse_number(text),
                Value::Number(_) => Some(answer.clone()),
                _ => None,
            };
            let kept = number.unwrap_or_else(|| {
                report.note(format!("survey_score.{side}.{name} not a number (kept as written)"), 1);
                answer.clone()
            });
            side_normalised.insert(name.clone(), kept);
        }
        normalised.insert(side.clone(), Value::Object(side_normalised));
    }
    for (side, names) in EXPECTED_SURVEY_FIELDS {
        for name in names {
            let present =
                sides.get(side).and_then(Value::as_object).is_some_and(|answers| answers.contains_key(*name));
            if !present {
                report.note(format!("survey_score.{side}.{name} missing"), 1);
            }
        }
    }
    Value::Object(normalised)
}

fn parse_number(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(integer) = text.parse::<i64>() {
        return Some(Value::from(integer));
    }
    let float = text.parse::<f64>().ok()?;
    serde_json::Number::from_f64(float).map(Value::Number)
}

fn read_message(
    place: &Place<'_>,
    message_index: usize,
    message: &Value,
    report: &mut ImportReport,
) -> Result<Message, CorpusError> {
    let field = |name: &str| format!("dialog[{message_index}]{name}");
    let Value::Object(object) = message else {
        return Err(place.error(field(""), format!("expected an object, found {}", json_kind(message))));
    };
    let raw_speaker = required_str(place, object, "speaker", &field(".speaker"))?;
    let (speaker, role) = map_speaker(raw_speaker).ok_or_else(|| {
        place.error(
            field(".speaker"),
            format!(
                "unknown speaker {raw_speaker:?} (known: seeker, usr, user, supporter, sys, \
                 system, listener, helper)"
            ),
        )
    })?;
    if raw_speaker != speaker {
        report.note(format!("speaker \"{raw_speaker}\" -> \"{speaker}\""), 1);
    }
    let raw_text = required_str(place, object, "content", &field(".content"))?;
    let text = raw_text.trim();
    if text.len() != raw_text.len() {
        report.note("content trimmed", 1);
    }
    if text.is_empty() {
        report.note("empty content kept", 1);
    }
    let mut strategy = None;
    let mut feedback = None;
    let mut extra = Meta::new();
    match object.get("annotation") {
        None | Some(Value::Null) => report.note("annotation missing (read as {})", 1),
        Some(Value::Object(annotation)) => {
            for (key, value) in annotation {
                match key.as_str() {
                    "strategy" => {
                        let label_field = field(".annotation.strategy");
                        let Value::String(label) = value else {
                            return Err(place.error(
                                label_field,
                                format!("expected a string, found {}", json_kind(value)),
                            ));
                        };
                        strategy = Some(read_strategy(place, &label_field, label, report)?);
                    }
                    "feedback" => match value {
                        Value::String(text) => feedback = Some(text.clone()),
                        Value::Number(number) => feedback = Some(number.to_string()),
                        Value::Null => report.note("feedback null (dropped)", 1),
                        other => {
                            return Err(place.error(
                                field(".annotation.feedback"),
                                format!("expected a string or a number, found {}", json_kind(other)),
                            ));
                        }
                    },
                    _ => {
                        extra.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        Some(other) => {
            return Err(
                place.error(field(".annotation"), format!("expected an object, found {}", json_kind(other)))
            );
        }
    }
    Ok(Message { speaker, role, text: text.to_string(), strategy, feedback, extra })
}

fn map_speaker(raw: &str) -> Option<(&'static str, Role)> {
    match raw.trim().to_lowercase().as_str() {
        "seeker" | "usr" | "user" => Some((SEEKER, Role::User)),
        "supporter" | "sys" | "system" | "listener" | "helper" => Some((SUPPORTER, Role::Assistant)),
        _ => None,
    }
}

fn read_strategy(
    place: &Place<'_>,
    field: &str,
    label: &str,
    report: &mut ImportReport,
) -> Result<Strategy, CorpusError> {
    let Some(found) = Strategy::from_label(label) else {
        let known: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
        return Err(place.error(field, format!("unknown strategy {label:?} (known: {})", known.join(", "))));
    };
    if found.was_variant {
        report.note(format!("strategy \"{label}\" -> \"{}\"", found.strategy.name()), 1);
    }
    Ok(found.strategy)
}

/// A turn being built, with every strategy and feedback of the messages merged into it.
struct PendingTurn {
    message: Message,
    strategies: Vec<Strategy>,
    feedbacks: Vec<String>,
}

fn build_turns(messages: Vec<Message>, merge_consecutive: bool, report: &mut ImportReport) -> Vec<Turn> {
    let mut pending: Vec<PendingTurn> = Vec::with_capacity(messages.len());
    for message in messages {
        if merge_consecutive
            && let Some(last) = pending.last_mut()
            && last.message.speaker == message.speaker
        {
            merge_into(last, message);
            report.note("consecutive messages merged", 1);
            continue;
        }
        pending.push(PendingTurn {
            strategies: message.strategy.into_iter().collect(),
            feedbacks: message.feedback.iter().cloned().collect(),
            message,
        });
    }
    pending.into_iter().enumerate().map(|(index, turn)| finish_turn(index, turn)).collect()
}

fn merge_into(turn: &mut PendingTurn, message: Message) {
    let merged = &mut turn.message;
    if merged.text.is_empty() {
        merged.text = message.text;
    } else if !message.text.is_empty() {
        merged.text.push(' ');
        merged.text.push_str(&message.text);
    }
    // The first strategy and feedback stay on the turn; all of them are listed in
    // `extra` when they differ (see `finish_turn`).
    turn.strategies.extend(message.strategy);
    turn.feedbacks.extend(message.feedback.iter().cloned());
    merged.strategy = merged.strategy.or(message.strategy);
    if merged.feedback.is_none() {
        merged.feedback = message.feedback;
    }
    for (key, value) in message.extra {
        merged.extra.entry(key).or_insert(value);
    }
}

fn finish_turn(index: usize, turn: PendingTurn) -> Turn {
    let PendingTurn { message, strategies, feedbacks } = turn;
    let mut extra = message.extra;
    if strategies.windows(2).any(|pair| pair[0] != pair[1]) {
        let names = strategies.iter().map(|s| Value::from(s.name())).collect();
        extra.insert("strategies".to_string(), Value::Array(names));
    }
    if feedbacks.windows(2).any(|pair| pair[0] != pair[1]) {
        let all = feedbacks.into_iter().map(Value::from).collect();
        extra.insert("feedbacks".to_string(), Value::Array(all));
    }
    Turn {
        index: index as u32,
        original_id: None,
        speaker: message.speaker.to_string(),
        role: message.role,
        text: message.text,
        reply_to: None,
        labels: TurnLabels {
            strategy: message.strategy,
            feedback: message.feedback,
            extra,
            ..TurnLabels::default()
        },
    }
}
