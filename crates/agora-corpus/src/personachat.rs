//! Persona-Chat / ConvAI2 `*_original_no_cands.txt` and its `self`/`revised` variants.
//!
//! Every line starts with a line number that restarts at 1 with each dialogue. A line
//! is either a persona fact (`N your persona: ...`, `N partner's persona: ...`) or an
//! exchange `N partner utterance<TAB>self utterance`, optionally followed (in the files
//! "with candidates") by `<TAB>reward<TAB>cand1|cand2|...`, which are counted and dropped.
//! Files are read line by line; a dialogue is delivered as soon as the next one starts,
//! and the last one at the end of the file.

use std::path::Path;

use agora_core::{Conversation, Meta, Participant, Persona, Role, Source, Turn};
use serde_json::Value;

use crate::input::{self, Lines};
use crate::{CorpusError, ImportOptions, ImportReport, Location, Sink};

const CORPUS: &str = "personachat";
const PARTNER: &str = "partner";
const SELF: &str = "self";
const SELF_PERSONA_PREFIX: &str = "your persona:";
const PARTNER_PERSONA_PREFIX: &str = "partner's persona:";
/// The partner's utterance when the self side opens the dialogue.
const SILENCE: &str = "__SILENCE__";
const EXTENSIONS: [&str; 3] = [".txt", ".txt.gz", ".txt.bz2"];

/// Imports a Persona-Chat text file (plain, gzip or bzip2), or every `.txt` file of a
/// folder in name order, one conversation per dialogue.
pub fn import(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    let files = input::files_in(path, &EXTENSIONS)?;
    if files.is_empty() {
        return Err(CorpusError::invalid(
            Location::file(path),
            "no Persona-Chat files (*.txt, *.txt.gz, *.txt.bz2) in this folder",
        ));
    }
    let mut report = ImportReport::default();
    for file in files {
        report.merge(import_file(&file, options, sink)?);
    }
    Ok(report)
}

fn import_file(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    let file_stem = file_stem(path);
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned());
    let mut reader = Lines::open(path)?;
    let mut report = ImportReport::default();
    let mut dialogue: Option<Dialogue> = None;
    let mut dialogues_started: u64 = 0;
    let mut previous_number: Option<u64> = None;
    while let Some((line_number, text)) = reader.next_line()? {
        let outcome = read_line(path, line_number, text, &mut previous_number, &mut report);
        let line = match outcome {
            Ok(line) => line,
            Err(error) => {
                report.skip_or_fail(options.keep_going, error)?;
                continue;
            }
        };
        let Some((number, content)) = line else {
            continue;
        };
        if number == 1 {
            if let Some(finished) = dialogue.take() {
                deliver(finished, &file_name, &mut report, sink)?;
            }
            dialogue = Some(Dialogue::new(
                format!("{file_stem}:{dialogues_started}"),
                dialogues_started,
                line_number,
            ));
            dialogues_started += 1;
        }
        // `read_line` refuses a number other than 1 before the first dialogue.
        let Some(current) = dialogue.as_mut() else {
            continue;
        };
        if let Err(error) = current.add(path, line_number, content, &mut report) {
            report.skip_or_fail(options.keep_going, error)?;
        }
    }
    // The last dialogue has no following "1" line to close it: deliver it here.
    match dialogue {
        Some(finished) => deliver(finished, &file_name, &mut report, sink)?,
        None if report.skipped == 0 => {
            return Err(CorpusError::invalid(Location::file(path), "empty file: no dialogues"));
        }
        None => {}
    }
    report.bytes = reader.consumed;
    Ok(report)
}

/// `valid_both_original_no_cands` for `valid_both_original_no_cands.txt(.gz)`.
fn file_stem(path: &Path) -> String {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let without_compression = name.strip_suffix(".gz").or_else(|| name.strip_suffix(".bz2")).unwrap_or(&name);
    without_compression.strip_suffix(".txt").unwrap_or(without_compression).to_string()
}

/// Splits `N rest` and checks the numbering. `None` for a blank line (counted).
fn read_line<'t>(
    path: &Path,
    line_number: u64,
    text: &'t str,
    previous_number: &mut Option<u64>,
    report: &mut ImportReport,
) -> Result<Option<(u64, &'t str)>, CorpusError> {
    let location = || Location::line(path, line_number);
    let mut text = text;
    if line_number == 1
        && let Some(rest) = text.strip_prefix('\u{feff}')
    {
        report.note("byte order mark removed", 1);
        text = rest;
    }
    if text.trim().is_empty() {
        report.note("blank lines ignored", 1);
        return Ok(None);
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number = text[..digits_end].parse::<u64>().ok().filter(|&number| number >= 1);
    let Some(number) = number else {
        return Err(CorpusError::invalid(
            location().with_field("line number"),
            "the line does not start with a dialogue line number (1, 2, ...)",
        ));
    };
    let Some(content) = text[digits_end..].strip_prefix(' ') else {
        return Err(CorpusError::invalid(
            location().with_field("line number"),
            format!("expected a space after the line number {number}"),
        ));
    };
    let previous = previous_number.replace(number);
    match previous {
        _ if number == 1 => {}
        None => {
            return Err(CorpusError::invalid(
                location().with_field("line number"),
                format!("the first dialogue starts at line number {number}, expected 1"),
            ));
        }
        Some(previous) if number <= previous => {
            return Err(CorpusError::invalid(
                location().with_field("line number"),
                format!("line number {number} goes back after {previous} without restarting at 1"),
            ));
        }
        Some(previous) if number > previous + 1 => {
            report.note("line numbers that skip forward (lines missing?)", 1);
        }
        Some(_) => {}
    }
    Ok(Some((number, content)))
}

/// A dialogue being read.
struct Dialogue {
    /// `<file stem>:<0-based dialogue number>`.
    original_id: String,
    dialogue_number: u64,
    first_line: u64,
    partner_facts: Vec<String>,
    self_facts: Vec<String>,
    turns: Vec<Turn>,
}

impl Dialogue {
    fn new(original_id: String, dialogue_number: u64, first_line: u64) -> Dialogue {
        Dialogue {
            original_id,
            dialogue_number,
            first_line,
            partner_facts: Vec::new(),
            self_facts: Vec::new(),
            turns: Vec::new(),
        }
    }

    /// Adds a persona fact or an exchange (the text after the line number).
    fn add(
        &mut self,
        path: &Path,
        line_number: u64,
        content: &str,
        report: &mut ImportReport,
    ) -> Result<(), CorpusError> {
        // Persona lines never hold a tab; an exchange could start with the prefix text.
        if !content.contains('\t') {
            if let Some(fact) = content.strip_prefix(SELF_PERSONA_PREFIX) {
                self.self_facts.push(fact.trim().to_string());
                return Ok(());
            }
            if let Some(fact) = content.strip_prefix(PARTNER_PERSONA_PREFIX) {
                self.partner_facts.push(fact.trim().to_string());
                return Ok(());
            }
            return Err(CorpusError::invalid(
                Location::line(path, line_number).with_field("utterances"),
                "expected `partner utterance<TAB>self utterance` or a persona line, found no tab",
            ));
        }
        let mut fields = content.split('\t');
        let partner_text = fields.next().unwrap_or_default().trim();
        let self_text = fields.next().unwrap_or_default().trim();
        let reward = fields.next();
        let candidates = fields.next();
        let extra_fields = fields.count();
        if reward.is_some_and(|reward| !reward.trim().is_empty()) {
            report.note("reward fields dropped", 1);
        }
        if let Some(candidates) = candidates.filter(|c| !c.trim().is_empty()) {
            report.note("lines with candidates", 1);
            report.note("candidates dropped", candidates.split('|').count() as u64);
        }
        if extra_fields > 0 {
            report.note("extra tab-separated fields dropped", extra_fields as u64);
        }
        if partner_text == SILENCE {
            // The self side opens the dialogue; __SILENCE__ is a placeholder, not speech.
            if self.turns.is_empty() {
                report.note("__SILENCE__ openings (self speaks first)", 1);
            } else {
                report.note("__SILENCE__ partner utterances after the first dropped", 1);
            }
        } else {
            self.push_turn(PARTNER, Role::User, partner_text, report);
        }
        self.push_turn(SELF, Role::Assistant, self_text, report);
        Ok(())
    }

    fn push_turn(&mut self, speaker: &str, role: Role, text: &str, report: &mut ImportReport) {
        if text.is_empty() {
            report.note("empty utterances kept", 1);
        }
        self.turns.push(Turn {
            index: self.turns.len() as u32,
            original_id: None,
            speaker: speaker.to_string(),
            role,
            text: text.to_string(),
            reply_to: None,
            labels: Default::default(),
        });
    }

    fn into_conversation(self, file_name: &Option<String>) -> Conversation {
        let persona = |name: &str, facts: Vec<String>| {
            // A side without persona lines (the `self`/`none` variants) has no known persona.
            (!facts.is_empty()).then(|| Persona { name: name.to_string(), facts, ..Persona::default() })
        };
        let mut participants = vec![
            Participant {
                name: PARTNER.to_string(),
                role: Role::User,
                persona: persona(PARTNER, self.partner_facts),
            },
            Participant {
                name: SELF.to_string(),
                role: Role::Assistant,
                persona: persona(SELF, self.self_facts),
            },
        ];
        // Participants are listed in order of first appearance.
        if self.turns.first().is_some_and(|turn| turn.speaker == SELF) {
            participants.reverse();
        }
        let mut meta = Meta::new();
        if let Some(file_name) = file_name {
            meta.insert("file".to_string(), Value::from(file_name.as_str()));
        }
        meta.insert("dialogue".to_string(), Value::from(self.dialogue_number));
        meta.insert("first_line".to_string(), Value::from(self.first_line));
        Conversation {
            id: Conversation::make_id(CORPUS, &self.original_id),
            source: Source { corpus: CORPUS.to_string(), original_id: self.original_id },
            participants,
            turns: self.turns,
            meta,
        }
    }
}

fn deliver(
    dialogue: Dialogue,
    file_name: &Option<String>,
    report: &mut ImportReport,
    sink: &mut Sink<'_>,
) -> Result<(), CorpusError> {
    if dialogue.turns.is_empty() {
        report.note("dialogues without utterances kept", 1);
    }
    let conversation = dialogue.into_conversation(file_name);
    report.conversations += 1;
    report.turns += conversation.turns.len() as u64;
    sink(conversation)
}
