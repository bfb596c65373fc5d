//! Personas, named texts (topics, instructions) and annotations: the inputs and labels
//! of experiments, kept in named collections.

use agora_core::{Annotation, Persona};
use rusqlite::params;
use serde::Serialize;

use crate::{Store, StoreError};

/// A named text of a collection: a topic, a user or moderator instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedText {
    pub name: String,
    pub text: String,
}

impl Store {
    /// Stores personas under `collection`, replacing ones with the same name (so a
    /// re-import is idempotent). Returns how many were written.
    pub fn put_personas(&mut self, collection: &str, personas: &[Persona]) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO personas (collection, name, position, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (position, persona) in personas.iter().enumerate() {
                let body = serde_json::to_string(persona).map_err(|e| StoreError::json(&persona.name, e))?;
                insert.execute(params![collection, persona.name, position as i64, body])?;
            }
        }
        transaction.commit()?;
        Ok(personas.len())
    }

    pub fn personas(&self, collection: &str) -> Result<Vec<Persona>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT name, body FROM personas WHERE collection = ?1 ORDER BY position, name")?;
        let mut rows = statement.query([collection])?;
        let mut personas = Vec::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let body: String = row.get(1)?;
            personas.push(
                serde_json::from_str(&body).map_err(|e| StoreError::json(format!("persona {name}"), e))?,
            );
        }
        Ok(personas)
    }

    /// Stores named texts under `collection`, replacing same-named ones.
    pub fn put_texts(&mut self, collection: &str, texts: &[NamedText]) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO texts (collection, name, text) VALUES (?1, ?2, ?3)",
            )?;
            for text in texts {
                insert.execute(params![collection, text.name, text.text])?;
            }
        }
        transaction.commit()?;
        Ok(texts.len())
    }

    pub fn texts(&self, collection: &str) -> Result<Vec<NamedText>, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT name, text FROM texts WHERE collection = ?1 ORDER BY name")?;
        let rows = statement
            .query_map([collection], |row| Ok(NamedText { name: row.get(0)?, text: row.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Collections of personas and of texts, with their sizes: `(kind, collection, count)`.
    pub fn collections(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT 'personas', collection, COUNT(*) FROM personas GROUP BY collection
             UNION ALL SELECT 'texts', collection, COUNT(*) FROM texts GROUP BY collection
             ORDER BY 1, 2",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores annotations from `source` (a file or a job id); re-storing the same
    /// annotation replaces it. Returns how many were written.
    pub fn put_annotations(&mut self, source: &str, annotations: &[Annotation]) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR REPLACE INTO annotations (conversation_id, turn_index, annotator, scale, body, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for annotation in annotations {
                let body = serde_json::to_string(annotation)
                    .map_err(|e| StoreError::json(&annotation.conversation_id, e))?;
                insert.execute(params![
                    annotation.conversation_id,
                    annotation.turn_index,
                    annotation.annotator,
                    annotation.scale,
                    body,
                    source
                ])?;
            }
        }
        transaction.commit()?;
        Ok(annotations.len())
    }

    pub fn annotations(&self, conversation_id: &str) -> Result<Vec<Annotation>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT body FROM annotations WHERE conversation_id = ?1 ORDER BY turn_index, annotator, scale",
        )?;
        let mut rows = statement.query([conversation_id])?;
        let mut annotations = Vec::new();
        while let Some(row) = rows.next()? {
            let body: String = row.get(0)?;
            annotations.push(
                serde_json::from_str(&body)
                    .map_err(|e| StoreError::json(format!("annotation of {conversation_id}"), e))?,
            );
        }
        Ok(annotations)
    }
}
