//! The job ledger. A long job (simulate, annotate, judge, train) is a set of units with
//! stable keys; each finished unit is written in its own transaction together with its
//! result, and `(job, unit)` is a primary key, so a job killed at any moment resumes by
//! skipping what `done_units` returns, and a unit can never be recorded twice.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Store, StoreError, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }
}

/// A finished unit of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub key: String,
    pub result: serde_json::Value,
    pub finished_at: String,
}

/// A job of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub kind: String,
    pub config: serde_json::Value,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Store {
    /// The job `id`, when it exists.
    pub fn job(&self, id: &str) -> Result<Option<JobInfo>, StoreError> {
        let row: Option<(String, String, String, String, String)> = self
            .connection
            .query_row(
                "SELECT kind, config, status, created_at, updated_at FROM jobs WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            )
            .optional()?;
        row.map(|(kind, config, status, created_at, updated_at)| {
            let config =
                serde_json::from_str(&config).map_err(|e| StoreError::json(format!("job {id} config"), e))?;
            Ok(JobInfo { id: id.to_string(), kind, config, status, created_at, updated_at })
        })
        .transpose()
    }

    /// Creates job `id` or, when it exists, checks that it is the same job (same kind
    /// and configuration) so a resume cannot silently mix two experiments.
    pub fn ensure_job(&self, id: &str, kind: &str, config: &serde_json::Value) -> Result<(), StoreError> {
        let config_text = config.to_string();
        let existing: Option<(String, String)> = self
            .connection
            .query_row("SELECT kind, config FROM jobs WHERE id = ?1", [id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        match existing {
            None => {
                let time = now();
                self.connection.execute(
                    "INSERT INTO jobs (id, kind, config, status, created_at, updated_at)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?4)",
                    params![id, kind, config_text, time],
                )?;
                Ok(())
            }
            Some((stored_kind, stored_config)) if stored_kind == kind && stored_config == config_text => {
                self.set_job_status(id, JobStatus::Running)
            }
            Some((stored_kind, _)) => Err(StoreError::Conflict(format!(
                "job `{id}` exists with a different {} — start a new job id to run a changed configuration",
                if stored_kind == kind {
                    "configuration".to_string()
                } else {
                    format!("kind ({stored_kind})")
                }
            ))),
        }
    }

    pub fn set_job_status(&self, id: &str, status: JobStatus) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE jobs SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, status.as_str(), now()],
        )?;
        Ok(())
    }

    /// The keys of the units of `job` already finished.
    pub fn done_units(&self, job: &str) -> Result<HashSet<String>, StoreError> {
        let mut statement = self.connection.prepare("SELECT unit_key FROM job_units WHERE job_id = ?1")?;
        let keys = statement.query_map([job], |row| row.get(0))?;
        Ok(keys.collect::<Result<_, _>>()?)
    }

    /// Records a finished unit atomically. Returns `false` (and changes nothing) when
    /// the unit was already recorded — the guard against duplicates after a resume.
    pub fn record_unit(&self, job: &str, key: &str, result: &serde_json::Value) -> Result<bool, StoreError> {
        let inserted = self.connection.execute(
            "INSERT OR IGNORE INTO job_units (job_id, unit_key, status, result, finished_at)
             VALUES (?1, ?2, 'done', ?3, ?4)",
            params![job, key, result.to_string(), now()],
        )?;
        Ok(inserted == 1)
    }

    /// Every finished unit of a job, in key order.
    pub fn units(&self, job: &str) -> Result<Vec<Unit>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT unit_key, result, finished_at FROM job_units WHERE job_id = ?1 ORDER BY unit_key",
        )?;
        let mut rows = statement.query([job])?;
        let mut units = Vec::new();
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            let text: String = row.get(1)?;
            let result = serde_json::from_str(&text)
                .map_err(|e| StoreError::json(format!("job {job} unit {key}"), e))?;
            units.push(Unit { key, result, finished_at: row.get(2)? });
        }
        Ok(units)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn units_are_recorded_once_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        {
            let store = Store::open(&path).unwrap();
            store.ensure_job("sim-1", "simulate", &json!({"seed": 1})).unwrap();
            assert!(store.record_unit("sim-1", "d0/t0", &json!({"text": "hi"})).unwrap());
            assert!(store.record_unit("sim-1", "d0/t1", &json!({"text": "yo"})).unwrap());
            // A resumed job that redoes a unit cannot duplicate it.
            assert!(!store.record_unit("sim-1", "d0/t1", &json!({"text": "other"})).unwrap());
        }
        let store = Store::open(&path).unwrap();
        store.ensure_job("sim-1", "simulate", &json!({"seed": 1})).unwrap();
        let done = store.done_units("sim-1").unwrap();
        assert_eq!(done.len(), 2);
        let units = store.units("sim-1").unwrap();
        assert_eq!(units[1].result, json!({"text": "yo"}));
        store.set_job_status("sim-1", JobStatus::Done).unwrap();
        let job = store.job("sim-1").unwrap().unwrap();
        assert_eq!((job.kind.as_str(), job.status.as_str()), ("simulate", "done"));
        assert_eq!(job.config, json!({"seed": 1}));
        assert!(store.job("sim-2").unwrap().is_none());
    }

    #[test]
    fn a_changed_configuration_is_a_new_job() {
        let store = Store::in_memory().unwrap();
        store.ensure_job("j", "judge", &json!({"rubric": "likert"})).unwrap();
        let error = store.ensure_job("j", "judge", &json!({"rubric": "pairwise"})).unwrap_err();
        assert!(error.to_string().contains("different configuration"), "{error}");
        let error = store.ensure_job("j", "annotate", &json!({"rubric": "likert"})).unwrap_err();
        assert!(error.to_string().contains("different kind (judge)"), "{error}");
    }
}
