//! Corpora, conversations and turns: atomic, idempotent imports; reading conversations
//! back one at a time (streaming); per-corpus summaries and statistics.

use std::collections::BTreeMap;

use agora_core::{Conversation, Participant, Role, Source, Turn, TurnLabels};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, now};

/// What an import changed in the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    /// Conversations not in the store before.
    pub added: u64,
    /// Conversations already stored with identical content (left as they were).
    pub unchanged: u64,
    /// Conversations already stored with different content (replaced).
    pub replaced: u64,
    pub turns_written: u64,
}

/// An import in progress: one transaction, so an import lands whole or not at all.
/// Dropping it without [`ImportBatch::finish`] rolls everything back.
#[derive(Debug)]
pub struct ImportBatch<'a> {
    store: &'a Store,
    corpus_id: i64,
    corpus_name: String,
    counts: ImportCounts,
    finished: bool,
}

/// One line of `agora corpora`.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusSummary {
    pub name: String,
    pub format: String,
    pub conversations: u64,
    pub turns: u64,
    pub created_at: String,
    pub imports: u64,
}

/// Corpus statistics for `agora stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub conversations: u64,
    pub turns: u64,
    pub mean_turns: f64,
    pub max_turns: u64,
    pub mean_turn_chars: f64,
    pub roles: BTreeMap<String, u64>,
    pub strategies: BTreeMap<String, u64>,
    pub deltas: u64,
    pub deltas_by_op: u64,
    pub deltas_confirmed: u64,
    pub delta_comments: u64,
    pub speakers: u64,
}

impl Store {
    /// Starts importing into corpus `corpus_name` (created when new, with `format`).
    /// Conversation ids become `<corpus_name>:<original id>`, so one file imported
    /// under two names never collides.
    pub fn begin_import(&self, corpus_name: &str, format: &str) -> Result<ImportBatch<'_>, StoreError> {
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        let corpus_id = match self.corpus_id_and_format(corpus_name)? {
            Some((id, existing_format)) if existing_format == format => id,
            Some((_, existing_format)) => {
                self.connection.execute_batch("ROLLBACK")?;
                return Err(StoreError::Conflict(format!(
                    "corpus `{corpus_name}` holds {existing_format} data; import {format} under another --name"
                )));
            }
            None => {
                self.connection.execute(
                    "INSERT INTO corpora (name, format, created_at) VALUES (?1, ?2, ?3)",
                    params![corpus_name, format, now()],
                )?;
                self.connection.last_insert_rowid()
            }
        };
        Ok(ImportBatch {
            store: self,
            corpus_id,
            corpus_name: corpus_name.to_string(),
            counts: ImportCounts::default(),
            finished: false,
        })
    }

    fn corpus_id_and_format(&self, name: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT id, format FROM corpora WHERE name = ?1", [name], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?)
    }

    /// All corpora with their sizes.
    pub fn corpora(&self) -> Result<Vec<CorpusSummary>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT c.name, c.format, c.created_at,
                    (SELECT COUNT(*) FROM conversations v WHERE v.corpus_id = c.id),
                    (SELECT COALESCE(SUM(turn_count), 0) FROM conversations v WHERE v.corpus_id = c.id),
                    (SELECT COUNT(*) FROM imports i WHERE i.corpus_id = c.id)
             FROM corpora c ORDER BY c.name",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(CorpusSummary {
                name: row.get(0)?,
                format: row.get(1)?,
                created_at: row.get(2)?,
                conversations: row.get(3)?,
                turns: row.get(4)?,
                imports: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The format of a corpus, or `None` when there is no such corpus.
    pub fn corpus_format(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.corpus_id_and_format(name)?.map(|(_, format)| format))
    }

    /// One conversation with all its turns.
    pub fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let head = self
            .connection
            .query_row(
                "SELECT v.original_id, c.format, v.participants, v.meta
                 FROM conversations v JOIN corpora c ON c.id = v.corpus_id WHERE v.id = ?1",
                [id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((original_id, format, participants, meta)) = head else {
            return Ok(None);
        };
        let participants: Vec<Participant> = match participants {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::json(format!("conversation {id} participants"), e))?,
            None => Vec::new(),
        };
        let meta = match meta {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::json(format!("conversation {id} meta"), e))?,
            None => Default::default(),
        };
        Ok(Some(Conversation {
            id: id.to_string(),
            source: Source { corpus: format, original_id },
            participants,
            turns: self.turns(id)?,
            meta,
        }))
    }

    fn turns(&self, conversation_id: &str) -> Result<Vec<Turn>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT turn_index, original_id, speaker, role, text, reply_to, labels
             FROM turns WHERE conversation_id = ?1 ORDER BY turn_index",
        )?;
        let mut rows = statement.query([conversation_id])?;
        let mut turns = Vec::new();
        while let Some(row) = rows.next()? {
            let index: u32 = row.get(0)?;
            let role_text: String = row.get(3)?;
            let role = Role::parse(&role_text).ok_or_else(|| {
                StoreError::Conflict(format!(
                    "conversation {conversation_id} turn {index}: unknown role `{role_text}`"
                ))
            })?;
            let labels = match row.get::<_, Option<String>>(6)? {
                Some(text) => serde_json::from_str(&text).map_err(|e| {
                    StoreError::json(format!("conversation {conversation_id} turn {index} labels"), e)
                })?,
                None => TurnLabels::default(),
            };
            turns.push(Turn {
                index,
                original_id: row.get(1)?,
                speaker: row.get(2)?,
                role,
                text: row.get(4)?,
                reply_to: row.get(5)?,
                labels,
            });
        }
        Ok(turns)
    }

    /// The ids of a corpus's conversations, sorted.
    pub fn conversation_ids(&self, corpus_name: &str) -> Result<Vec<String>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT v.id FROM conversations v JOIN corpora c ON c.id = v.corpus_id
             WHERE c.name = ?1 ORDER BY v.id",
        )?;
        let ids = statement.query_map([corpus_name], |row| row.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// Calls `visit` with every conversation of a corpus in id order, one at a time,
    /// so memory stays bounded by the largest conversation.
    pub fn for_each_conversation<E>(
        &self,
        corpus_name: &str,
        mut visit: impl FnMut(Conversation) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<StoreError>,
    {
        for id in self.conversation_ids(corpus_name)? {
            let conversation = self
                .conversation(&id)?
                .ok_or_else(|| StoreError::Conflict(format!("conversation {id} vanished during a read")))?;
            visit(conversation)?;
        }
        Ok(())
    }

    /// Statistics of one corpus, or of the whole store with `None`.
    pub fn stats(&self, corpus_name: Option<&str>) -> Result<Stats, StoreError> {
        // One filter shared by every query below.
        let filter = "conversation_id IN (SELECT v.id FROM conversations v JOIN corpora c
                      ON c.id = v.corpus_id WHERE ?1 IS NULL OR c.name = ?1)";
        let mut stats = Stats::default();
        let (conversations, max_turns): (u64, Option<u64>) = self.connection.query_row(
            "SELECT COUNT(*), MAX(turn_count) FROM conversations v JOIN corpora c ON c.id = v.corpus_id
             WHERE ?1 IS NULL OR c.name = ?1",
            [corpus_name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        stats.conversations = conversations;
        stats.max_turns = max_turns.unwrap_or(0);
        let (turns, chars, speakers): (u64, Option<f64>, u64) = self.connection.query_row(
            &format!("SELECT COUNT(*), AVG(LENGTH(text)), COUNT(DISTINCT speaker) FROM turns WHERE {filter}"),
            [corpus_name],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        stats.turns = turns;
        stats.mean_turn_chars = chars.unwrap_or(0.0);
        stats.speakers = speakers;
        stats.mean_turns = if conversations == 0 { 0.0 } else { turns as f64 / conversations as f64 };
        stats.roles = self
            .counts(&format!("SELECT role, COUNT(*) FROM turns WHERE {filter} GROUP BY role"), corpus_name)?;
        stats.strategies = self.counts(
            &format!(
                "SELECT json_extract(labels, '$.strategy') AS s, COUNT(*) FROM turns
                 WHERE {filter} AND labels IS NOT NULL AND s IS NOT NULL GROUP BY s"
            ),
            corpus_name,
        )?;
        let (deltas, by_op, confirmed, givers): (u64, Option<u64>, Option<u64>, Option<u64>) =
            self.connection.query_row(
                &format!(
                    "SELECT COUNT(json_extract(labels, '$.delta')),
                            SUM(json_extract(labels, '$.delta.by_op') = 1),
                            SUM(json_extract(labels, '$.delta.confirmed') = 1),
                            SUM(json_extract(labels, '$.gives_delta') = 1)
                     FROM turns WHERE {filter} AND labels IS NOT NULL"
                ),
                [corpus_name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?;
        stats.deltas = deltas;
        stats.deltas_by_op = by_op.unwrap_or(0);
        stats.deltas_confirmed = confirmed.unwrap_or(0);
        stats.delta_comments = givers.unwrap_or(0);
        Ok(stats)
    }

    fn counts(&self, sql: &str, corpus_name: Option<&str>) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut statement = self.connection.prepare(sql)?;
        let rows = statement.query_map([corpus_name], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl ImportBatch<'_> {
    /// Stores one conversation: added when new, left alone when identical, replaced
    /// when its content changed. Returns the id it was stored under.
    pub fn add(&mut self, conversation: &Conversation) -> Result<String, StoreError> {
        let connection = &self.store.connection;
        let original_id = &conversation.source.original_id;
        let id = format!("{}:{}", self.corpus_name, original_id);
        let participants = if conversation.participants.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&conversation.participants).map_err(|e| StoreError::json(&id, e))?)
        };
        let meta = if conversation.meta.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&conversation.meta).map_err(|e| StoreError::json(&id, e))?)
        };
        let mut labels = Vec::with_capacity(conversation.turns.len());
        let mut hasher = Fnv64::new();
        hasher.write(participants.as_deref().unwrap_or("").as_bytes());
        hasher.write(meta.as_deref().unwrap_or("").as_bytes());
        for turn in &conversation.turns {
            let encoded = if turn.labels.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&turn.labels).map_err(|e| StoreError::json(&id, e))?)
            };
            hasher.write(&turn.index.to_le_bytes());
            hasher.write(turn.original_id.as_deref().unwrap_or("").as_bytes());
            hasher.write(turn.speaker.as_bytes());
            hasher.write(turn.role.as_str().as_bytes());
            hasher.write(turn.text.as_bytes());
            hasher.write(&turn.reply_to.map_or(-1, i64::from).to_le_bytes());
            hasher.write(encoded.as_deref().unwrap_or("").as_bytes());
            labels.push(encoded);
        }
        let content_hash = format!("{:016x}", hasher.finish());

        let existing: Option<String> = connection
            .prepare_cached("SELECT content_hash FROM conversations WHERE id = ?1")?
            .query_row([&id], |row| row.get(0))
            .optional()?;
        match existing {
            Some(hash) if hash == content_hash => {
                self.counts.unchanged += 1;
                return Ok(id);
            }
            Some(_) => {
                // Cascades to the turns.
                connection.prepare_cached("DELETE FROM conversations WHERE id = ?1")?.execute([&id])?;
                self.counts.replaced += 1;
            }
            None => self.counts.added += 1,
        }
        connection
            .prepare_cached(
                "INSERT INTO conversations (id, corpus_id, original_id, turn_count, content_hash, participants, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id,
                self.corpus_id,
                original_id,
                conversation.turns.len() as i64,
                content_hash,
                participants,
                meta
            ])?;
        let mut insert = connection.prepare_cached(
            "INSERT INTO turns (conversation_id, turn_index, original_id, speaker, role, text, reply_to, labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (turn, labels) in conversation.turns.iter().zip(&labels) {
            insert.execute(params![
                id,
                turn.index,
                turn.original_id,
                turn.speaker,
                turn.role.as_str(),
                turn.text,
                turn.reply_to,
                labels
            ])?;
        }
        self.counts.turns_written += conversation.turns.len() as u64;
        Ok(id)
    }

    pub fn counts(&self) -> ImportCounts {
        self.counts
    }

    /// Records the import (its source path and report, as JSON) and commits.
    pub fn finish(
        mut self,
        source_path: &str,
        report: &serde_json::Value,
    ) -> Result<ImportCounts, StoreError> {
        self.store.connection.execute(
            "INSERT INTO imports (corpus_id, path, report, imported_at) VALUES (?1, ?2, ?3, ?4)",
            params![self.corpus_id, source_path, report.to_string(), now()],
        )?;
        self.store.connection.execute_batch("COMMIT")?;
        self.finished = true;
        Ok(self.counts)
    }
}

impl Drop for ImportBatch<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing to report to: the caller is already unwinding an error.
            let _ = self.store.connection.execute_batch("ROLLBACK");
        }
    }
}

/// FNV-1a, 64 bits: a content fingerprint that is stable across Rust releases
/// (unlike `DefaultHasher`) and fast enough to hash every imported byte.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
