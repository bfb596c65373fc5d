//! The register of training runs. A run's files (configuration, metrics, checkpoints,
//! samples) live in its run folder; the store records that it exists, where, what it
//! trained, how it ended and which sweep it belongs to, so `agora runs` can list and
//! compare runs without walking folders.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, now};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub dir: String,
    pub method: String,
    pub model: String,
    pub config: serde_json::Value,
    pub status: String,
    pub summary: Option<serde_json::Value>,
    pub sweep: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id, dir, method, model, config, status, summary, sweep, created_at, updated_at";

fn parse_json(id: &str, column: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::json(format!("run {id}, column {column}"), error))
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(RunRecord, String, Option<String>)> {
    Ok((
        RunRecord {
            id: row.get(0)?,
            dir: row.get(1)?,
            method: row.get(2)?,
            model: row.get(3)?,
            config: serde_json::Value::Null,
            status: row.get(5)?,
            summary: None,
            sweep: row.get(7)?,
            created_at: row.get(8)?,
            updated_at: row.get(9)?,
        },
        row.get(4)?,
        row.get(6)?,
    ))
}

fn finish(row: (RunRecord, String, Option<String>)) -> Result<RunRecord, StoreError> {
    let (mut record, config, summary) = row;
    record.config = parse_json(&record.id, "config", &config)?;
    record.summary = summary.map(|text| parse_json(&record.id, "summary", &text)).transpose()?;
    Ok(record)
}

impl Store {
    /// Registers a new run, or marks an existing one running again (a resume).
    pub fn register_run(
        &self,
        id: &str,
        dir: &str,
        method: &str,
        model: &str,
        config: &serde_json::Value,
        sweep: Option<&str>,
    ) -> Result<(), StoreError> {
        let time = now();
        self.connection.execute(
            "INSERT INTO runs (id, dir, method, model, config, status, summary, sweep, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', NULL, ?6, ?7, ?7)
             ON CONFLICT(id) DO UPDATE SET status = 'running', updated_at = excluded.updated_at",
            params![id, dir, method, model, config.to_string(), sweep, time],
        )?;
        Ok(())
    }

    /// Records how a run ended (`finished`, `early-stopped`, `failed`, ...).
    pub fn finish_run(&self, id: &str, status: &str, summary: &serde_json::Value) -> Result<(), StoreError> {
        let changed = self.connection.execute(
            "UPDATE runs SET status = ?2, summary = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status, summary.to_string(), now()],
        )?;
        if changed == 0 {
            return Err(StoreError::Conflict(format!("run {id} is not registered")));
        }
        Ok(())
    }

    /// Every run, newest first (optionally those of one sweep).
    pub fn runs(&self, sweep: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT {COLUMNS} FROM runs WHERE ?1 IS NULL OR sweep = ?1 ORDER BY created_at DESC, id DESC"
        ))?;
        let rows = statement.query_map([sweep], record_from_row)?;
        rows.map(|row| finish(row?)).collect()
    }

    /// The run `id`, or the only run whose id starts with `id` (ids are long).
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let exact = self
            .connection
            .query_row(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"), [id], record_from_row)
            .optional()?;
        if let Some(row) = exact {
            return finish(row).map(Some);
        }
        let mut statement = self
            .connection
            .prepare(&format!("SELECT {COLUMNS} FROM runs WHERE instr(id, ?1) > 0 ORDER BY id LIMIT 2"))?;
        let rows: Vec<_> = statement.query_map([id], record_from_row)?.collect::<rusqlite::Result<_>>()?;
        match rows.len() {
            1 => rows.into_iter().next().map(finish).transpose(),
            0 => Ok(None),
            _ => Err(StoreError::Conflict(format!("`{id}` names more than one run; give more of the id"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_registered_finished_listed_and_found_by_part_of_their_id() {
        let store = Store::in_memory().unwrap();
        let config = serde_json::json!({"method": "dpo"});
        store
            .register_run("20261122T100000Z_dpo-abc123", "runs/a", "dpo", "m.gguf", &config, Some("s1"))
            .unwrap();
        store.register_run("20261122T100001Z_sft-def456", "runs/b", "sft", "m.gguf", &config, None).unwrap();
        store
            .finish_run("20261122T100000Z_dpo-abc123", "finished", &serde_json::json!({"steps": 4}))
            .unwrap();
        let all = store.runs(None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, "20261122T100001Z_sft-def456");
        let sweep = store.runs(Some("s1")).unwrap();
        assert_eq!(sweep.len(), 1);
        assert_eq!(sweep[0].status, "finished");
        assert_eq!(sweep[0].summary, Some(serde_json::json!({"steps": 4})));
        assert_eq!(store.run("abc123").unwrap().unwrap().method, "dpo");
        assert!(store.run("zzz").unwrap().is_none());
        assert!(store.run("20261122T10000").is_err());
        // A resume marks the run running again without losing its creation time.
        store
            .register_run("20261122T100000Z_dpo-abc123", "runs/a", "dpo", "m.gguf", &config, Some("s1"))
            .unwrap();
        assert_eq!(store.run("abc123").unwrap().unwrap().status, "running");
        assert!(store.finish_run("nope", "failed", &config).is_err());
    }
}
