//! Tan et al. 2016 r/changemyview `*.jsonlist`: reply trees, deltas, footnote removal.
//!
//! One submission per line (plain, gzip or bzip2). Each submission carries a flat
//! `comments` list whose `parent_id` (`t3_<submission>` or `t1_<comment>`) rebuilds the
//! reply tree; each comment's `replies` holds nested copies of its answers, which the flat
//! list already has, so they are skipped unparsed.
//!
//! Turn order: turn 0 is the post; comments follow in depth-first pre-order (the order in
//! which Reddit displays a thread), siblings in file order. A parent therefore always
//! precedes its replies.
//!
//! Deltas: a comment containing `∆`, `Δ`, `&#8710;` or `!delta` outside quote lines awards
//! a delta to its parent comment; DeltaBot's "Confirmed: 1 delta awarded to /u/NAME"
//! confirms it (or reveals one whose sign we missed).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::path::Path;

use agora_core::{Conversation, Delta, Meta, Participant, Role, Source, SplitMix64, Turn, TurnLabels};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::input::{self, Lines};
use crate::{CorpusError, ImportOptions, ImportReport, Location, Sink};

/// The corpus name in conversation ids and sources.
const CORPUS: &str = "cmv";
/// File names `import` picks up in a folder.
const EXTENSIONS: &[&str] =
    &[".jsonlist", ".jsonlist.gz", ".jsonlist.bz2", ".jsonl", ".jsonl.gz", ".jsonl.bz2"];
/// What Reddit shows for a deleted account or body.
const DELETED: &str = "[deleted]";
const REMOVED: &str = "[removed]";
const DELTA_BOT: &str = "DeltaBot";
const AUTO_MODERATOR: &str = "AutoModerator";
/// The sentence that opens the CMV moderators' footnote appended to posts.
const FOOTNOTE_MARK: &str = "Hello, users of CMV! This is a footnote from your moderators";
/// DeltaBot's confirmation, matched ignoring ASCII case.
const CONFIRMATION: &str = "confirmed: 1 delta awarded to ";

// Report notes (one name per thing counted, so a report reads the same across files).
const NOTE_BLANK_LINES: &str = "blank lines skipped";
const NOTE_DELTAS: &str = "deltas found";
const NOTE_CONFIRMED: &str = "deltas confirmed by DeltaBot";
const NOTE_BY_OP: &str = "deltas by OP";
const NOTE_ONLY_BY_BOT: &str = "deltas found only through DeltaBot's confirmation";
const NOTE_UNMATCHED: &str = "DeltaBot confirmations with no matching comment";
const NOTE_NOT_AWARDED: &str = "delta signs replying to the post or to one's own comment (not awarded)";
const NOTE_SECOND_DELTAS: &str = "comments given more than one delta (first kept, OP's preferred)";
const NOTE_FOOTNOTES: &str = "CMV moderator footnotes removed";
const NOTE_DELETED: &str = "deleted comments";
const NOTE_ORPHANS: &str = "comments whose parent is missing, attached to the post";
const NOTE_CYCLES: &str = "comments in a reply cycle, attached to the post";
const NOTE_DUPLICATES: &str = "duplicate comment ids (first kept)";

/// Imports a `cmv_*.jsonlist` file (or every `.jsonlist`/`.jsonl`, optionally `.gz`/`.bz2`,
/// file of a folder), handing one conversation per submission to `sink`.
pub fn import(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
) -> Result<ImportReport, CorpusError> {
    let files = input::files_in(path, EXTENSIONS)?;
    if files.is_empty() {
        return Err(CorpusError::invalid(
            Location::file(path),
            format!("no CMV files in folder (looked for {})", EXTENSIONS.join(", ")),
        ));
    }
    let mut report = ImportReport::default();
    // Always present, so a report with no deltas says so rather than staying silent.
    for key in [NOTE_DELTAS, NOTE_CONFIRMED, NOTE_BY_OP] {
        report.note(key, 0);
    }
    for file in &files {
        import_file(file, options, sink, &mut report)?;
    }
    Ok(report)
}

fn import_file(
    path: &Path,
    options: &ImportOptions,
    sink: &mut Sink<'_>,
    report: &mut ImportReport,
) -> Result<(), CorpusError> {
    let mut lines = Lines::open(path)?;
    let mut records = 0u64;
    let mut blank_lines = 0u64;
    loop {
        let (number, line) = match lines.next_line() {
            Ok(Some(next)) => next,
            Ok(None) => break,
            // A line that is not UTF-8 is consumed by the reader, so with keep_going the
            // import can go on with the next one.
            Err(error) => {
                records += 1;
                report.skip_or_fail(options.keep_going, error)?;
                continue;
            }
        };
        if line.trim().is_empty() {
            blank_lines += 1;
            continue;
        }
        records += 1;
        match parse_submission(line, &Location::line(path, number), report) {
            Ok(conversation) => {
                report.conversations += 1;
                report.turns += conversation.turns.len() as u64;
                sink(conversation)?;
            }
            Err(error) => report.skip_or_fail(options.keep_going, error)?,
        }
    }
    report.bytes += lines.consumed;
    if blank_lines > 0 {
        report.note(NOTE_BLANK_LINES, blank_lines);
    }
    if records == 0 {
        return Err(CorpusError::invalid(Location::file(path), "empty file: no submissions"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The JSON shapes, borrowed from the line wherever a string has no escapes.

#[derive(Deserialize)]
struct RawSubmission<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    title: Option<Text<'a>>,
    #[serde(borrow)]
    selftext: Option<Text<'a>>,
    #[serde(borrow)]
    author: Option<Text<'a>>,
    #[serde(borrow)]
    url: Option<Text<'a>>,
    #[serde(borrow)]
    created_utc: Option<Scalar<'a>>,
    #[serde(borrow)]
    score: Option<Scalar<'a>>,
    #[serde(borrow)]
    comments: Option<Vec<RawComment<'a>>>,
    // Every other field is skipped unparsed (serde's default for unknown fields).
}

#[derive(Deserialize)]
struct RawComment<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
    #[serde(borrow)]
    parent_id: Option<Text<'a>>,
    #[serde(borrow)]
    author: Option<Text<'a>>,
    #[serde(borrow)]
    body: Option<Text<'a>>,
    #[serde(borrow)]
    score: Option<Scalar<'a>>,
    // `replies` ("" or a nested Listing) repeats comments the flat list already holds:
    // like every unknown field it is skipped without being built.
}

/// A JSON string: borrowed from the line when it has no escapes, owned otherwise.
/// (serde's `#[serde(borrow)]` only borrows a bare `Cow`, not one inside an `Option`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'a>, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// A number that Reddit dumps write either as a JSON number or as a string
/// (`created_utc`, `score`).
enum Scalar<'a> {
    Integer(i64),
    Float(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar<'a>, D::Error> {
        struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E>(self, value: i64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Integer(value))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Scalar<'a>, E> {
                Ok(i64::try_from(value).map_or(Scalar::Float(value as f64), Scalar::Integer))
            }
            fn visit_f64<E>(self, value: f64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Float(value))
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_any(ScalarVisitor(std::marker::PhantomData))
    }
}

impl Scalar<'_> {
    /// As JSON: a whole number becomes an integer (`1420070400.0` and `"1420070400"`
    /// both give `1420070400`), other numbers a float, anything else stays a string.
    fn to_json(&self) -> serde_json::Value {
        const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0; // 2^53
        let from_float = |value: f64| {
            if value.fract() == 0.0 && value.abs() < EXACT_IN_F64 {
                serde_json::Value::from(value as i64)
            } else {
                serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, Into::into)
            }
        };
        match self {
            Scalar::Integer(value) => serde_json::Value::from(*value),
            Scalar::Float(value) => from_float(*value),
            Scalar::Text(text) => {
                let trimmed = text.trim();
                if let Ok(value) = trimmed.parse::<i64>() {
                    serde_json::Value::from(value)
                } else if let Ok(value) = trimmed
                    .parse::<f64>()
                    .map_err(drop)
                    .and_then(|v| if v.is_finite() { Ok(v) } else { Err(()) })
                {
                    from_float(value)
                } else {
                    serde_json::Value::String(text.to_string())
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One submission.

/// What one submission adds to the report, gathered locally so notes are written once
/// per submission (and only when non-zero).
#[derive(Default)]
struct Counts {
    deltas: u64,
    confirmed: u64,
    by_op: u64,
    only_by_bot: u64,
    unmatched_confirmations: u64,
    not_awarded: u64,
    second_deltas: u64,
    footnotes: u64,
    deleted: u64,
    orphans: u64,
    cycles: u64,
    duplicates: u64,
}

impl Counts {
    fn add_to(&self, report: &mut ImportReport) {
        for (key, count) in [
            (NOTE_DELTAS, self.deltas),
            (NOTE_CONFIRMED, self.confirmed),
            (NOTE_BY_OP, self.by_op),
            (NOTE_ONLY_BY_BOT, self.only_by_bot),
            (NOTE_UNMATCHED, self.unmatched_confirmations),
            (NOTE_NOT_AWARDED, self.not_awarded),
            (NOTE_SECOND_DELTAS, self.second_deltas),
            (NOTE_FOOTNOTES, self.footnotes),
            (NOTE_DELETED, self.deleted),
            (NOTE_ORPHANS, self.orphans),
            (NOTE_CYCLES, self.cycles),
            (NOTE_DUPLICATES, self.duplicates),
        ] {
            if count > 0 {
                report.note(key, count);
            }
        }
    }
}

/// "No parent comment": the comment answers the post.
const POST: u32 = u32::MAX;

/// Parses one jsonlist line into a Conversation (used by import and by benchmarks).
///
/// Adds its notes (deltas, footnotes, orphans...) to `report`; counting conversations,
/// turns and bytes is left to the caller.
pub fn parse_submission(
    line: &str,
    location: &Location,
    report: &mut ImportReport,
) -> Result<Conversation, CorpusError> {
    let raw: RawSubmission<'_> = serde_json::from_str(line).map_err(|error| json_error(location, &error))?;
    let submission_id = match &raw.id {
        Some(Text(id)) => id.as_ref(),
        None => {
            return Err(CorpusError::invalid(location.clone().with_field("id"), "missing required field"));
        }
    };
    let record = || location.clone().with_record(format!("submission {submission_id}"));
    let comments = raw.comments.as_deref().unwrap_or_default();
    let mut counts = Counts::default();

    // Comment ids to positions in `comments`; a repeated id keeps its first comment.
    let mut position_of: HashMap<&str, u32> = HashMap::with_capacity(comments.len());
    let mut kept: Vec<u32> = Vec::with_capacity(comments.len());
    for (position, comment) in comments.iter().enumerate() {
        let Some(Text(id)) = &comment.id else {
            return Err(CorpusError::invalid(
                record().with_field(format!("comments[{position}].id")),
                "missing required field",
            ));
        };
        if comment.parent_id.is_none() {
            return Err(CorpusError::invalid(
                record().with_field(format!("comments[{position}].parent_id")),
                "missing required field",
            ));
        }
        match position_of.entry(id.as_ref()) {
            Entry::Occupied(_) => counts.duplicates += 1,
            Entry::Vacant(slot) => {
                slot.insert(position as u32);
                kept.push(position as u32);
            }
        }
    }

    // Parents, as positions in `comments` (POST for top-level comments and orphans).
    let mut parent_of: Vec<u32> = vec![POST; comments.len()];
    for &position in &kept {
        let parent_id = comments[position as usize].parent_id.as_ref().map_or("", |t| &t.0);
        let parent = if let Some(post_id) = parent_id.strip_prefix("t3_") {
            if post_id != submission_id {
                counts.orphans += 1;
            }
            POST
        } else {
            let comment_id = parent_id.strip_prefix("t1_").unwrap_or(parent_id);
            match position_of.get(comment_id) {
                Some(&parent) => parent,
                None => {
                    counts.orphans += 1;
                    POST
                }
            }
        };
        parent_of[position as usize] = parent;
    }

    let order = depth_first_order(&kept, &mut parent_of, &mut counts);

    // Turns: the post, then the comments in `order`.
    let op_name = raw.author.as_ref().map_or(DELETED, |t| &t.0);
    // A deleted OP cannot be recognised among the commenters.
    let op_known = op_name != DELETED;
    let mut turns = Vec::with_capacity(order.len() + 1);
    let mut turn_of: Vec<u32> = vec![0; comments.len()];
    // Whether each turn's raw body holds a delta sign outside quotes (turn 0: never).
    let mut signs: Vec<bool> = Vec::with_capacity(order.len() + 1);
    turns.push(Turn {
        index: 0,
        original_id: Some(submission_id.to_string()),
        speaker: op_name.to_string(),
        role: Role::User,
        text: raw.selftext.as_ref().map_or_else(String::new, |t| clean_text(&t.0, &mut counts)),
        reply_to: None,
        labels: TurnLabels::default(),
    });
    signs.push(false);
    for &position in &order {
        let comment = &comments[position as usize];
        let index = turns.len() as u32;
        turn_of[position as usize] = index;
        let parent = parent_of[position as usize];
        let reply_to = if parent == POST { 0 } else { turn_of[parent as usize] };
        let author = comment.author.as_ref().map_or(DELETED, |t| &t.0);
        let body = comment.body.as_ref().map_or("", |t| &t.0);
        let role = if op_known && author == op_name {
            Role::User
        } else if author == DELTA_BOT || author == AUTO_MODERATOR {
            Role::Moderator
        } else {
            Role::Assistant
        };
        let mut labels = TurnLabels::default();
        if let Some(score) = &comment.score {
            labels.extra.insert("score".into(), score.to_json());
        }
        let deleted = author == DELETED || body == DELETED || body == REMOVED;
        if deleted {
            counts.deleted += 1;
            labels.extra.insert("deleted".into(), serde_json::Value::Bool(true));
        }
        signs.push(role != Role::Moderator && has_delta_sign(body));
        turns.push(Turn {
            index,
            original_id: comment.id.as_ref().map(|t| t.0.to_string()),
            speaker: author.to_string(),
            role,
            text: clean_text(body, &mut counts),
            reply_to: Some(reply_to),
            labels,
        });
    }

    award_deltas(&mut turns, &signs, op_name, op_known, &mut counts);
    confirm_deltas(&mut turns, comments, &order, op_name, op_known, &mut counts);
    for turn in &turns {
        if let Some(delta) = &turn.labels.delta {
            counts.deltas += 1;
            counts.confirmed += u64::from(delta.confirmed);
            counts.by_op += u64::from(delta.by_op);
        }
    }
    counts.add_to(report);

    let mut meta = Meta::new();
    if let Some(Text(title)) = &raw.title {
        meta.insert("title".into(), clean_text(title, &mut Counts::default()).into());
    }
    if let Some(created) = &raw.created_utc {
        meta.insert("created_utc".into(), created.to_json());
    }
    if let Some(Text(url)) = &raw.url {
        meta.insert("url".into(), url.as_ref().into());
    }
    if let Some(score) = &raw.score {
        meta.insert("score".into(), score.to_json());
    }

    Ok(Conversation {
        id: Conversation::make_id(CORPUS, submission_id),
        source: Source { corpus: CORPUS.into(), original_id: submission_id.to_string() },
        participants: participants(&turns),
        turns,
        meta,
    })
}

/// "invalid JSON: EOF while parsing an object at column 123": the line is already in the
/// location, so serde's "line 1" is dropped.
fn json_error(location: &Location, error: &serde_json::Error) -> CorpusError {
    let text = error.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(message, _)| message);
    let kind = match error.classify() {
        serde_json::error::Category::Data => "unexpected JSON value",
        _ => "invalid JSON",
    };
    CorpusError::invalid(location.clone(), format!("{kind}: {message} at column {}", error.column()))
}

/// Kept comments (positions) in depth-first pre-order, siblings in file order. Comments
/// caught in a parent cycle (never reached from the post) are attached to the post, in
/// `parent_of` too, and counted.
fn depth_first_order(kept: &[u32], parent_of: &mut [u32], counts: &mut Counts) -> Vec<u32> {
    // Children lists in one flat array (compressed rows): children of position p are
    // `children[start[p]..start[p + 1]]`; the post's are `top_level`.
    let count = parent_of.len();
    let mut start = vec![0u32; count + 1];
    let mut top_level = Vec::new();
    for &position in kept {
        match parent_of[position as usize] {
            POST => top_level.push(position),
            parent => start[parent as usize + 1] += 1,
        }
    }
    for i in 0..count {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut children = vec![0u32; start[count] as usize];
    for &position in kept {
        let parent = parent_of[position as usize];
        if parent != POST {
            children[fill[parent as usize] as usize] = position;
            fill[parent as usize] += 1;
        }
    }

    let mut order = Vec::with_capacity(kept.len());
    let mut visited = vec![false; count];
    let mut stack: Vec<u32> = top_level.iter().rev().copied().collect();
    let walk = |stack: &mut Vec<u32>, order: &mut Vec<u32>, visited: &mut [bool]| {
        while let Some(position) = stack.pop() {
            if visited[position as usize] {
                continue;
            }
            visited[position as usize] = true;
            order.push(position);
            let range = start[position as usize] as usize..start[position as usize + 1] as usize;
            stack.extend(children[range].iter().rev().filter(|&&c| !visited[c as usize]));
        }
    };
    walk(&mut stack, &mut order, &mut visited);
    if order.len() < kept.len() {
        for &position in kept {
            if !visited[position as usize] {
                counts.cycles += 1;
                parent_of[position as usize] = POST;
                stack.push(position);
                walk(&mut stack, &mut order, &mut visited);
            }
        }
    }
    order
}

/// Speakers in order of first appearance ("[deleted]" is many people, so not listed).
fn participants(turns: &[Turn]) -> Vec<Participant> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut participants = Vec::new();
    for turn in turns {
        if turn.speaker != DELETED && seen.insert(turn.speaker.as_str(), ()).is_none() {
            participants.push(Participant { name: turn.speaker.clone(), role: turn.role, persona: None });
        }
    }
    participants
}

// ---------------------------------------------------------------------------------------
// Deltas.

/// Awards a delta to the parent of every comment whose body carries a delta sign.
fn award_deltas(turns: &mut [Turn], signs: &[bool], op_name: &str, op_known: bool, counts: &mut Counts) {
    for giver_index in 1..turns.len() {
        if !signs[giver_index] {
            continue;
        }
        let giver = &turns[giver_index];
        let parent = giver.reply_to.unwrap_or(0) as usize;
        if parent == 0 || turns[parent].speaker == giver.speaker {
            counts.not_awarded += 1;
            continue;
        }
        let delta = Delta {
            giver: giver.speaker.clone(),
            receiver: turns[parent].speaker.clone(),
            given_in: giver_index as u32,
            confirmed: false,
            by_op: op_known && giver.speaker == op_name,
        };
        turns[giver_index].labels.gives_delta = true;
        set_delta(&mut turns[parent].labels, delta, counts);
    }
}

/// Keeps the first delta a comment receives, except that OP's delta replaces another's
/// (the deltas persuasion research uses are OP's).
fn set_delta(labels: &mut TurnLabels, delta: Delta, counts: &mut Counts) {
    match &labels.delta {
        None => labels.delta = Some(delta),
        Some(existing) => {
            counts.second_deltas += 1;
            if delta.by_op && !existing.by_op {
                labels.delta = Some(delta);
            }
        }
    }
}

/// Reads DeltaBot's "Confirmed: 1 delta awarded to /u/NAME": the bot answers the giver's
/// comment, and the awarded comment is the giver's nearest ancestor written by NAME.
fn confirm_deltas(
    turns: &mut [Turn],
    comments: &[RawComment<'_>],
    order: &[u32],
    op_name: &str,
    op_known: bool,
    counts: &mut Counts,
) {
    for (offset, &position) in order.iter().enumerate() {
        let bot_index = offset + 1;
        if turns[bot_index].speaker != DELTA_BOT {
            continue;
        }
        let body = comments[position as usize].body.as_ref().map_or("", |t| &t.0);
        for name in confirmed_names(body) {
            let giver_index = turns[bot_index].reply_to.unwrap_or(0) as usize;
            let awarded = ancestors(turns, giver_index)
                .find(|&ancestor| turns[ancestor].speaker.eq_ignore_ascii_case(&name));
            let Some(awarded) = awarded else {
                counts.unmatched_confirmations += 1;
                continue;
            };
            let giver = turns[giver_index].speaker.clone();
            let receiver = turns[awarded].speaker.clone();
            match &mut turns[awarded].labels.delta {
                Some(delta) if delta.given_in as usize == giver_index => delta.confirmed = true,
                existing => {
                    if existing.is_none() {
                        counts.only_by_bot += 1;
                    } else {
                        counts.second_deltas += 1;
                    }
                    // DeltaBot's word outranks a sign read from another comment.
                    *existing = Some(Delta {
                        by_op: op_known && giver == op_name,
                        giver,
                        receiver,
                        given_in: giver_index as u32,
                        confirmed: true,
                    });
                }
            }
            turns[giver_index].labels.gives_delta = true;
        }
    }
}

/// The comments above `index` (nearest first), stopping before the post.
fn ancestors(turns: &[Turn], index: usize) -> impl Iterator<Item = usize> + '_ {
    let mut current = index;
    std::iter::from_fn(move || {
        if current == 0 {
            return None;
        }
        // reply_to always points backwards, so this walk ends.
        current = turns.get(current)?.reply_to.unwrap_or(0) as usize;
        (current != 0).then_some(current)
    })
}

/// The names in DeltaBot's confirmations in `body`. A name is Reddit's `[A-Za-z0-9_-]`,
/// so whatever follows it (`.`, ` (`, `]`, a space) ends it; Markdown's `\_` is unescaped.
fn confirmed_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = find_ignore_ascii_case(&body[from..], CONFIRMATION) {
        let mut rest = &body[from + found + CONFIRMATION.len()..];
        from += found + CONFIRMATION.len();
        rest = rest.strip_prefix('/').unwrap_or(rest);
        rest = rest.strip_prefix("u/").or_else(|| rest.strip_prefix("U/")).unwrap_or(rest);
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                name.push(c);
            } else if c == '\\' && chars.peek() == Some(&'_') {
                continue;
            } else {
                break;
            }
        }
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

/// Whether a raw body (entities not yet decoded) gives a delta: `∆`, `Δ`, `&#8710;` or
/// `!delta` (any case) on a line that is not a quote. People quote the rules, so a sign
/// inside `> ...` does not count.
fn has_delta_sign(raw_body: &str) -> bool {
    if !line_has_delta_sign(raw_body) {
        return false;
    }
    raw_body.split('\n').any(|line| {
        let line = line.trim_start();
        !(line.starts_with('>') || line.starts_with("&gt;")) && line_has_delta_sign(line)
    })
}

fn line_has_delta_sign(text: &str) -> bool {
    text.contains('\u{2206}')
        || text.contains('\u{394}')
        || text.contains("#8710;")
        || text.match_indices('!').any(|(at, _)| {
            text.as_bytes().get(at + 1..at + 6).is_some_and(|w| w.eq_ignore_ascii_case(b"delta"))
        })
}

fn find_ignore_ascii_case(haystack: &str, needle: &str) -> Option<usize> {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    haystack.windows(needle.len()).position(|window| window.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------------------
// Text cleaning.

/// Decodes HTML entities, removes the CMV moderators' footnote, trims trailing whitespace
/// of every line and of the text. Quote lines (`> ...`) stay lines of their own.
fn clean_text(raw: &str, counts: &mut Counts) -> String {
    let decoded = if raw.contains('&') { decode_entities(raw) } else { Cow::Borrowed(raw) };
    let mut text: &str = &decoded;
    if let Some(cut) = footnote_start(text) {
        text = &text[..cut];
        counts.footnotes += 1;
    }
    let text = text.trim_end();
    let mut cleaned = String::with_capacity(text.len());
    for (number, line) in text.split('\n').enumerate() {
        if number > 0 {
            cleaned.push('\n');
        }
        cleaned.push_str(line.trim_end());
    }
    cleaned
}

/// Where the footnote starts: the `_____` rule line above it when there is one (blank
/// lines between allowed), else its own `> *Hello, users of CMV!...` line.
fn footnote_start(text: &str) -> Option<usize> {
    let mark = text.find(FOOTNOTE_MARK)?;
    let line_start = text[..mark].rfind('\n').map_or(0, |newline| newline + 1);
    // Only a quote line that opens with the sentence, not a mention inside other text.
    if !text[line_start..mark].chars().all(|c| matches!(c, '>' | '*' | ' ' | '\t')) {
        return None;
    }
    let mut cut = line_start;
    let mut above = &text[..line_start];
    while let Some(stripped) = above.strip_suffix('\n') {
        let previous_start = stripped.rfind('\n').map_or(0, |newline| newline + 1);
        let previous = stripped[previous_start..].trim();
        if previous.is_empty() {
            above = &stripped[..previous_start];
            continue;
        }
        if previous.len() >= 3 && previous.chars().all(|c| c == '_') {
            cut = previous_start;
        }
        break;
    }
    Some(cut)
}

/// Decodes `&amp; &lt; &gt; &quot; &#39; &apos; &nbsp;` and numeric `&#NNNN;`/`&#xHH;`
/// entities, once (Reddit's `&amp;gt;` stays `&gt;`); anything else is left as written.
fn decode_entities(text: &str) -> Cow<'_, str> {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        decoded.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match decode_entity(rest) {
            Some((character, length)) => {
                decoded.push(character);
                rest = &rest[length..];
            }
            None => {
                decoded.push('&');
                rest = &rest[1..];
            }
        }
    }
    decoded.push_str(rest);
    Cow::Owned(decoded)
}

/// The entity at the start of `text` (which starts with `&`) and its length in bytes.
fn decode_entity(text: &str) -> Option<(char, usize)> {
    const LONGEST_ENTITY: usize = 10; // "&#x10FFFF;"
    let semicolon = text.bytes().take(LONGEST_ENTITY + 1).position(|b| b == b';')?;
    let name = text.get(1..semicolon)?;
    let character = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse::<u32>().ok()?,
            };
            char::from_u32(code).filter(|&c| c != '\0')?
        }
    };
    Some((character, semicolon + 1))
}

// ---------------------------------------------------------------------------------------
// Synthetic corpus for benchmarks.

const WORDS: &[&str] = &[
    "the",
    "view",
    "people",
    "think",
    "because",
    "argument",
    "evidence",
    "that",
    "is",
    "not",
    "really",
    "would",
    "should",
    "policy",
    "tax",
    "society",
    "moral",
    "choice",
    "freedom",
    "market",
    "study",
    "data",
    "example",
    "however",
    "therefore",
    "change",
    "my",
    "mind",
    "government",
    "school",
    "children",
    "climate",
    "energy",
    "nuclear",
    "vote",
    "law",
    "rights",
    "history",
    "culture",
    "money",
    "health",
    "science",
    "religion",
    "free",
    "speech",
    "you",
    "I",
    "we",
    "they",
    "it",
    "and",
    "or",
    "but",
    "if",
    "when",
    "most",
    "some",
    "many",
    "better",
    "worse",
    "cost",
    "benefit",
    "harm",
    "good",
    "bad",
    "fair",
];
const NAMES: &[&str] = &[
    "quiet_falcon",
    "Rhetorician42",
    "tea-and-logic",
    "MapleSkeptic",
    "night_owl_7",
    "BayesianBarista",
    "civic-minded",
    "Old_Pragmatist",
    "dialectic_dan",
    "Penguin_Ethics",
    "lurker_no_more",
    "SocraticMethod",
];
const SYNTHETIC_FOOTNOTE: &str = "\n\n_____\n\n&gt; *Hello, users of CMV! This is a footnote \
from your moderators. We'd just like to remind you of a couple of things. Firstly, please \
remember to* ***[read through our rules](http://www.reddit.com/r/changemyview/wiki/rules)***. \
*If you see a comment that has broken one, it is more effective to report it than downvote \
it. Speaking of which,* ***[downvotes don't change views](http://www.reddit.com/r/\
changemyview/wiki/guidelines#wiki_upvoting.2Fdownvoting)****! Any questions or concerns? \
Feel free to* ***[message us](http://www.reddit.com/message/compose?to=/r/changemyview)***. \
*Happy CMVing!*";

#[derive(Serialize)]
struct SyntheticSubmission<'a> {
    id: &'a str,
    name: String,
    title: &'a str,
    selftext: &'a str,
    author: &'a str,
    created_utc: serde_json::Value,
    url: String,
    score: i64,
    num_comments: usize,
    subreddit: &'static str,
    comments: Vec<SyntheticComment<'a>>,
}

#[derive(Serialize, Clone)]
struct SyntheticComment<'a> {
    id: &'a str,
    name: String,
    parent_id: String,
    link_id: String,
    author: &'a str,
    body: &'a str,
    created_utc: f64,
    score: i64,
    ups: i64,
    controversiality: u8,
    edited: bool,
    replies: SyntheticReplies<'a>,
}

#[derive(Serialize, Clone)]
#[serde(untagged)]
enum SyntheticReplies<'a> {
    Empty(&'static str),
    Listing { kind: &'static str, data: SyntheticListing<'a> },
}

#[derive(Serialize, Clone)]
struct SyntheticListing<'a> {
    children: Vec<SyntheticChild<'a>>,
    after: Option<&'static str>,
    before: Option<&'static str>,
}

#[derive(Serialize, Clone)]
struct SyntheticChild<'a> {
    kind: &'static str,
    data: SyntheticComment<'a>,
}

/// A plan for one generated comment, before it is written out.
struct PlannedComment {
    id: String,
    /// Index of the parent in the plan, `None` for top-level.
    parent: Option<usize>,
    /// The parent id written, when it deliberately points nowhere (an orphan).
    orphan_parent: Option<String>,
    author: String,
    body: String,
    score: i64,
}

fn synthetic_comment<'a>(
    plan: &'a [PlannedComment],
    position: usize,
    link_id: &str,
    submission_created: f64,
    replies: SyntheticReplies<'a>,
) -> SyntheticComment<'a> {
    let planned = &plan[position];
    let parent_id = match (&planned.orphan_parent, planned.parent) {
        (Some(orphan), _) => orphan.clone(),
        (None, Some(parent)) => format!("t1_{}", plan[parent].id),
        (None, None) => link_id.to_string(),
    };
    SyntheticComment {
        id: &planned.id,
        name: format!("t1_{}", planned.id),
        parent_id,
        link_id: link_id.to_string(),
        author: &planned.author,
        body: &planned.body,
        created_utc: submission_created + position as f64 * 60.0,
        score: planned.score,
        ups: planned.score,
        controversiality: 0,
        edited: false,
        replies,
    }
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

fn pick<'a>(rng: &mut SplitMix64, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// Random prose: `words` words, sometimes several paragraphs, a quote line, an entity.
fn synthetic_prose(rng: &mut SplitMix64, fewest_words: usize, spread: usize) -> String {
    let words = fewest_words + rng.below(spread);
    let mut text = String::with_capacity(words * 7);
    if rng.next_f64() < 0.2 {
        text.push_str("&gt; ");
        for _ in 0..6 + rng.below(10) {
            text.push_str(pick(rng, WORDS));
            text.push(' ');
        }
        text.push_str("\n\n");
    }
    for position in 0..words {
        if position > 0 {
            let roll = rng.next_f64();
            text.push_str(if roll < 0.02 {
                "\n\n"
            } else if roll < 0.03 {
                " &amp; "
            } else if roll < 0.07 {
                ", "
            } else {
                " "
            });
        }
        text.push_str(pick(rng, WORDS));
    }
    text.push('.');
    text
}

/// Writes a synthetic Tan-format jsonlist of about `target_bytes` (for the 200 MB benchmark): realistic
/// shapes (40-150 comments per submission, nested parent_ids, some "" and some listing `replies`,
/// deltas given by OP with ∆ / &#8710; / !delta and DeltaBot confirmations, footnotes, quotes, deleted comments),
/// deterministic for a seed (use agora_core::SplitMix64), bodies made from a small built-in word list.
///
/// Returns the number of bytes written (the first submission that reaches the target is
/// the last one).
pub fn write_synthetic(out: &mut dyn std::io::Write, target_bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut rng = SplitMix64::new(seed);
    let mut written = 0u64;
    let mut submission_number = 0u64;
    let mut comment_number = 0u64;
    let mut line = Vec::new();
    while written < target_bytes {
        submission_number += 1;
        let submission_id = base36(130_000_000 + submission_number);
        let op = format!("{}_{}", pick(&mut rng, NAMES), rng.below(1000));
        let title = format!("CMV: {}", synthetic_prose(&mut rng, 8, 12));
        let mut selftext = synthetic_prose(&mut rng, 60, 250);
        if rng.next_f64() < 0.7 {
            selftext.push_str(SYNTHETIC_FOOTNOTE);
        }

        let comment_count = 40 + rng.below(111);
        let mut plan: Vec<PlannedComment> = Vec::with_capacity(comment_count + comment_count / 8);
        while plan.len() < comment_count {
            comment_number += 1;
            let id = format!("c{}", base36(2_000_000_000 + comment_number));
            let parent = if plan.is_empty() || rng.next_f64() < 0.3 {
                None
            } else {
                // Mostly answer a recent comment, which makes deep threads.
                let recent = plan.len().min(8);
                Some(plan.len() - 1 - rng.below(recent))
            };
            let orphan_parent = (rng.next_f64() < 0.005).then(|| format!("t1_gone{comment_number}"));
            let parent_author = parent.map(|p| plan[p].author.clone());
            let roll = rng.next_f64();
            let (author, body) = if roll < 0.04 {
                (DELETED.to_string(), if rng.next_f64() < 0.5 { DELETED } else { REMOVED }.to_string())
            } else if roll < 0.06 {
                (pick(&mut rng, NAMES).to_string(), DELETED.to_string())
            } else if roll < 0.22 {
                (op.clone(), synthetic_prose(&mut rng, 10, 80))
            } else {
                (pick(&mut rng, NAMES).to_string(), synthetic_prose(&mut rng, 15, 140))
            };
            let mut body = body;
            let mut delta_to = None;
            let can_award = parent_author.as_ref().is_some_and(|receiver| {
                *receiver != author && receiver != DELETED && author != DELETED && body != DELETED
            });
            if let (true, Some(receiver)) = (can_award, &parent_author) {
                let roll = rng.next_f64();
                let sign = if author == op { 0.25 } else { 0.03 };
                if roll < sign {
                    let sign = ["\u{2206}", "&#8710;", "!delta", "!Delta"][rng.below(4)];
                    body = format!("{sign} {body}");
                    delta_to = Some(receiver.clone());
                } else if roll < sign + 0.02 {
                    // A quoted rule: must not count.
                    body = format!("&gt; Award a \u{2206} when your view changes\n\n{body}");
                }
            }
            let giver_index = plan.len();
            plan.push(PlannedComment {
                id,
                parent,
                orphan_parent,
                author,
                body,
                score: rng.below(400) as i64 - 20,
            });
            let confirmed_receiver = delta_to.filter(|_| rng.next_f64() < 0.8);
            if let Some(receiver) = confirmed_receiver {
                comment_number += 1;
                plan.push(PlannedComment {
                    id: format!("c{}", base36(2_000_000_000 + comment_number)),
                    parent: Some(giver_index),
                    orphan_parent: None,
                    author: DELTA_BOT.to_string(),
                    body: format!(
                        "Confirmed: 1 delta awarded to /u/{receiver}. \
                         [^{receiver}'s ^delta ^history](/r/ChangeMyView/wiki/user/{receiver})"
                    ),
                    score: 1,
                });
            }
        }

        let link_id = format!("t3_{submission_id}");
        let created = 1_420_070_400.0 + submission_number as f64 * 1_800.0;
        let mut children_of: Vec<Vec<usize>> = vec![Vec::new(); plan.len()];
        for (position, planned) in plan.iter().enumerate() {
            if let Some(parent) = planned.parent {
                children_of[parent].push(position);
            }
        }
        let mut comments = Vec::with_capacity(plan.len());
        for (position, children) in children_of.iter().enumerate() {
            // Like the Reddit API, half the comments with answers carry nested copies.
            let replies = if !children.is_empty() && rng.next_f64() < 0.5 {
                SyntheticReplies::Listing {
                    kind: "Listing",
                    data: SyntheticListing {
                        children: children
                            .iter()
                            .map(|&child| SyntheticChild {
                                kind: "t1",
                                data: synthetic_comment(
                                    &plan,
                                    child,
                                    &link_id,
                                    created,
                                    SyntheticReplies::Empty(""),
                                ),
                            })
                            .collect(),
                        after: None,
                        before: None,
                    },
                }
            } else {
                SyntheticReplies::Empty("")
            };
            comments.push(synthetic_comment(&plan, position, &link_id, created, replies));
        }
        let created_utc = if submission_number.is_multiple_of(5) {
            serde_json::Value::String(format!("{created}"))
        } else {
            serde_json::Value::from(created)
        };
        let submission = SyntheticSubmission {
            id: &submission_id,
            name: link_id.clone(),
            title: &title,
            selftext: &selftext,
            author: &op,
            created_utc,
            url: format!("https://www.reddit.com/r/changemyview/comments/{submission_id}/"),
            score: rng.below(2000) as i64,
            num_comments: comments.len(),
            subreddit: "changemyview",
            comments,
        };
        line.clear();
        serde_json::to_writer(&mut line, &submission).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_clean(raw: &str, expected: &str, footnotes: u64) {
        let mut counts = Counts::default();
        assert_eq!(clean_text(raw, &mut counts), expected, "raw {raw:?}");
        assert_eq!(counts.footnotes, footnotes, "footnotes of {raw:?}");
    }

    #[test]
    fn entities_are_decoded_once() {
        check_clean("a &amp; b &lt;c&gt; &quot;d&quot; &#39;e&#39;", "a & b <c> \"d\" 'e'", 0);
        check_clean("&#8710; &#x2206; &#X394;", "\u{2206} \u{2206} \u{394}", 0);
        check_clean("&amp;gt; stays &gt;", "&gt; stays >", 0);
        check_clean("AT&T & co &unknown; &#; &#xZZ; &#0; &", "AT&T & co &unknown; &#; &#xZZ; &#0; &", 0);
    }

    #[test]
    fn quotes_stay_lines_and_trailing_space_goes() {
        check_clean(
            "&gt; quoted  \n&gt; still quoted\n\nmine.   \n\n\n",
            "> quoted\n> still quoted\n\nmine.",
            0,
        );
    }

    #[test]
    fn footnote_is_removed_with_or_without_its_rule() {
        let footnote = "&gt; *Hello, users of CMV! This is a footnote from your moderators. Happy CMVing!*";
        check_clean(&format!("My view.\n\n_____\n\n{footnote}"), "My view.", 1);
        check_clean(&format!("My view.\n\n{footnote}\nmore"), "My view.", 1);
        check_clean(
            "I read \"Hello, users of CMV! This is a footnote from your moderators\" daily.",
            "I read \"Hello, users of CMV! This is a footnote from your moderators\" daily.",
            0,
        );
    }

    #[test]
    fn delta_signs_outside_quotes_count() {
        for (body, expected) in [
            ("\u{2206} good point", true),
            ("&#8710; good point", true),
            ("good point !delta", true),
            ("!DELTA", true),
            ("Greek \u{394} works too", true),
            ("&gt; award a \u{2206} if\n\nno", false),
            ("  > !delta in a quote", false),
            ("&gt; quote\n\u{2206} for you", true),
            ("no delta here!", false),
            ("! delta", false),
        ] {
            assert_eq!(has_delta_sign(body), expected, "{body:?}");
        }
    }

    #[test]
    fn deltabot_names_end_at_punctuation() {
        for (body, expected) in [
            ("Confirmed: 1 delta awarded to /u/some_one.", vec!["some_one"]),
            ("confirmed: 1 delta awarded to /u/Foo-Bar (2\u{2206}).", vec!["Foo-Bar"]),
            ("[Confirmed: 1 delta awarded to /u/a\\_b]", vec!["a_b"]),
            ("CONFIRMED: 1 delta awarded to u/x\nmore", vec!["x"]),
            ("Confirmed: 1 delta awarded to /u/", vec![]),
            ("This delta has been rejected.", vec![]),
        ] {
            assert_eq!(confirmed_names(body), expected, "{body:?}");
        }
    }

    #[test]
    fn scalars_normalise_whole_numbers() {
        for (json, expected) in [
            ("1420070400", serde_json::json!(1420070400)),
            ("1420070400.0", serde_json::json!(1420070400)),
            ("\"1420070400\"", serde_json::json!(1420070400)),
            ("\"1420070400.0\"", serde_json::json!(1420070400)),
            ("1.5", serde_json::json!(1.5)),
            ("\"soon\"", serde_json::json!("soon")),
        ] {
            let scalar: Scalar<'_> = serde_json::from_str(json).unwrap();
            assert_eq!(scalar.to_json(), expected, "{json}");
        }
    }

    #[test]
    fn base36_matches_reddit_ids() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
