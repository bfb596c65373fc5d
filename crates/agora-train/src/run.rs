//! A run folder, `runs/<timestamp>_<method>-<id>/`:
//!
//! ```text
//! config.json           the resolved configuration
//! metrics.jsonl         one record per logged step or evaluation (metrics.csv: the same, flat)
//! samples.jsonl         generations on fixed prompts, trained model next to reference
//! checkpoints/step-N/   trainable weights (model.safetensors, or a PEFT adapter),
//!                       optimizer.safetensors, trainer_state.json
//! final/                the weights at the end (same layout)
//! summary.json          written when the run ends
//! ```
//!
//! A checkpoint folder is written under a temporary name and renamed when complete, so
//! a crash leaves either a whole checkpoint or none. Resuming truncates the logs to the
//! checkpoint's step, so nothing logged after it appears twice.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

pub const CONFIG_FILE: &str = "config.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const METRICS_CSV: &str = "metrics.csv";
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const STATE_FILE: &str = "trainer_state.json";

/// Where the loop stands: enough to continue exactly where a checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch being trained (0-based) and how many of its batches are done.
    pub epoch: usize,
    pub batches_done_in_epoch: usize,
    pub best_eval_loss: Option<f64>,
    /// Evaluations in a row without improvement.
    pub evals_without_improvement: usize,
    pub total_steps: usize,
    /// A hash of every token of the training set: a run resumes only on the data it
    /// started with (the seeded order of each epoch depends on it).
    #[serde(default)]
    pub data_hash: String,
}

/// How a run ended (also stored in the workspace's run register).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub method: String,
    pub model: String,
    pub status: String,
    pub steps: usize,
    pub total_steps: usize,
    pub final_train_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub trained_tokens: u64,
    pub seconds: f64,
    /// The last value of every metric logged.
    pub last_metrics: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

impl RunDir {
    /// Makes a new run folder under `runs_dir`. The name carries the UTC time to the
    /// second and a random suffix, and the folder is created exclusively, so two runs
    /// started in the same second never share (or overwrite) a folder.
    pub fn create(runs_dir: &Path, method: &str) -> Result<RunDir> {
        std::fs::create_dir_all(runs_dir).map_err(io(runs_dir))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let stamp = agora_core::time::format_utc(now.as_secs() as i64).replace(['-', ':'], "");
        let mut entropy = agora_core::SplitMix64::new(
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32),
        );
        for _ in 0..16 {
            let id = format!("{stamp}_{method}-{:06x}", entropy.next_u64() & 0xff_ffff);
            let path = runs_dir.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::create_dir(path.join("checkpoints")).map_err(io(&path))?;
                    return Ok(RunDir { id, path });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(TrainError::Io { path, source }),
            }
        }
        Err(TrainError::Other(format!("could not create a unique run folder under {}", runs_dir.display())))
    }

    /// An existing run folder (to resume or show).
    pub fn open(path: &Path) -> Result<RunDir> {
        if !path.join(CONFIG_FILE).is_file() {
            return Err(TrainError::Other(format!(
                "{} is not a run folder (it has no {CONFIG_FILE})",
                path.display()
            )));
        }
        let id = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(RunDir { id, path: path.to_path_buf() })
    }

    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        write_json(&self.path.join(CONFIG_FILE), &config.to_json())
    }

    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text)
            .map_err(|error| TrainError::Config { file: path, message: error.to_string() })
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    pub fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.checkpoints_dir().join(format!("step-{step:06}"))
    }

    /// The complete checkpoint with the most steps, if any.
    pub fn last_checkpoint(&self) -> Result<Option<(usize, PathBuf)>> {
        let dir = self.checkpoints_dir();
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut best: Option<(usize, PathBuf)> = None;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name.strip_prefix("step-").and_then(|digits| digits.parse::<usize>().ok())
            else {
                continue;
            };
            if entry.path().join(STATE_FILE).is_file()
                && best.as_ref().is_none_or(|(best_step, _)| step > *best_step)
            {
                best = Some((step, entry.path()));
            }
        }
        Ok(best)
    }

    /// A folder to fill and then [`RunDir::commit_checkpoint`].
    pub fn begin_checkpoint(&self, step: usize) -> Result<PathBuf> {
        let partial = self.checkpoints_dir().join(format!("step-{step:06}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        Ok(partial)
    }

    /// Renames a filled checkpoint folder into place (replacing an older one of the same
    /// step) and keeps only the newest `keep` checkpoints.
    pub fn commit_checkpoint(
        &self,
        partial: &Path,
        step: usize,
        state: &TrainerState,
        keep: usize,
    ) -> Result<PathBuf> {
        write_json(&partial.join(STATE_FILE), &serde_json::to_value(state).unwrap_or(Value::Null))?;
        let target = self.checkpoint_dir(step);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(partial, &target).map_err(io(&target))?;
        self.prune_checkpoints(keep)?;
        Ok(target)
    }

    fn prune_checkpoints(&self, keep: usize) -> Result<()> {
        let dir = self.checkpoints_dir();
        let mut steps: Vec<(usize, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name.strip_prefix("step-").and_then(|digits| digits.parse::<usize>().ok()) {
                steps.push((step, entry.path()));
            }
        }
        steps.sort();
        let excess = steps.len().saturating_sub(keep.max(1));
        for (_, path) in steps.into_iter().take(excess) {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    pub fn read_state(checkpoint: &Path) -> Result<TrainerState> {
        let path = checkpoint.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text)
            .map_err(|error| TrainError::Config { file: path, message: error.to_string() })
    }

    /// Opens the metrics and samples logs for appending, first dropping every record of
    /// a step after `keep_through_step` (what a crash after the last checkpoint left).
    pub fn open_logs(&self, keep_through_step: Option<usize>) -> Result<Logs> {
        let metrics = self.path.join(METRICS_FILE);
        let samples = self.path.join(SAMPLES_FILE);
        for path in [&metrics, &samples] {
            truncate_records(path, keep_through_step)?;
        }
        Ok(Logs {
            metrics: append(&metrics)?,
            samples: append(&samples)?,
            metrics_path: metrics,
            samples_path: samples,
        })
    }

    /// Every metrics record logged so far.
    pub fn read_metrics(&self) -> Result<Vec<Map<String, Value>>> {
        read_records(&self.path.join(METRICS_FILE))
    }

    pub fn write_summary(&self, summary: &RunSummary) -> Result<()> {
        write_json(&self.path.join(SUMMARY_FILE), &serde_json::to_value(summary).unwrap_or(Value::Null))
    }

    pub fn read_summary(&self) -> Result<Option<RunSummary>> {
        let path = self.path.join(SUMMARY_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| TrainError::Config { file: path, message: error.to_string() })
    }

    /// Rewrites metrics.csv from metrics.jsonl: one column per metric name, in the order
    /// names first appear; empty cells where a record lacks one.
    pub fn write_metrics_csv(&self) -> Result<()> {
        let records = self.read_metrics()?;
        let mut columns: Vec<String> = Vec::new();
        for record in &records {
            for key in record.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
        let mut text = columns.iter().map(|column| csv_field(column)).collect::<Vec<_>>().join(",");
        text.push('\n');
        for record in &records {
            let row: Vec<String> = columns
                .iter()
                .map(|column| match record.get(column) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => csv_field(text),
                    Some(other) => csv_field(&other.to_string()),
                })
                .collect();
            text.push_str(&row.join(","));
            text.push('\n');
        }
        let path = self.path.join(METRICS_CSV);
        std::fs::write(&path, text).map_err(io(&path))
    }
}

/// The run's append-only logs; each record is flushed as written.
#[derive(Debug)]
pub struct Logs {
    metrics: File,
    samples: File,
    metrics_path: PathBuf,
    samples_path: PathBuf,
}

impl Logs {
    pub fn metric(&mut self, record: &Map<String, Value>) -> Result<()> {
        write_line(&mut self.metrics, &self.metrics_path, record)
    }

    pub fn sample(&mut self, record: &Map<String, Value>) -> Result<()> {
        write_line(&mut self.samples, &self.samples_path, record)
    }
}

fn write_line(file: &mut File, path: &Path, record: &Map<String, Value>) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|error| TrainError::Other(error.to_string()))?;
    line.push('\n');
    file.write_all(line.as_bytes()).and_then(|()| file.flush()).map_err(io(path))
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).map_err(io(path))
}

fn read_records(path: &Path) -> Result<Vec<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let file = File::open(path).map_err(io(path))?;
    let mut records = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Map<String, Value>>(&line) {
            Ok(record) => records.push(record),
            // A line cut by a crash mid-write: the last one, and it is dropped on resume.
            Err(error) => {
                return Err(TrainError::Data {
                    file: path.to_path_buf(),
                    line: index + 1,
                    field: "(record)".to_string(),
                    message: format!("not a JSON object: {error}"),
                });
            }
        }
    }
    Ok(records)
}

/// Keeps the records whose `step` is at most `keep_through_step` (all of them when
/// `None`... except a torn last line, which a crash can leave and which is dropped).
fn truncate_records(path: &Path, keep_through_step: Option<usize>) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut kept = String::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Map<String, Value>>(line) else {
            continue;
        };
        let step = record.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
        if keep_through_step.is_none_or(|limit| step <= limit) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    std::fs::write(path, kept).map_err(io(path))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|error| TrainError::Other(error.to_string()))?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text + "\n").map_err(io(&partial))?;
    std::fs::rename(&partial, path).map_err(io(path))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: usize, loss: f64) -> Map<String, Value> {
        let mut record = Map::new();
        record.insert("step".to_string(), step.into());
        record.insert("loss".to_string(), loss.into());
        record
    }

    #[test]
    fn two_runs_started_at_once_get_different_folders() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunDir::create(dir.path(), "sft").unwrap();
        let second = RunDir::create(dir.path(), "sft").unwrap();
        assert_ne!(first.path, second.path);
        assert!(first.id.contains("_sft-"));
    }

    #[test]
    fn resuming_drops_records_after_the_checkpoint_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "dpo").unwrap();
        let mut logs = run.open_logs(None).unwrap();
        for step in 1..=5 {
            logs.metric(&record(step, 1.0 / step as f64)).unwrap();
        }
        drop(logs);
        let path = run.path.join(METRICS_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"step\": 6, \"lo").unwrap();
        drop(file);
        run.open_logs(Some(3)).unwrap();
        let steps: Vec<u64> =
            run.read_metrics().unwrap().iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3]);
        run.write_metrics_csv().unwrap();
        let csv = std::fs::read_to_string(run.path.join(METRICS_CSV)).unwrap();
        assert_eq!(csv.lines().next(), Some("step,loss"));
        assert_eq!(csv.lines().count(), 4);
    }

    #[test]
    fn only_complete_checkpoints_count_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path(), "sft").unwrap();
        let state = |step| TrainerState {
            step,
            epoch: 0,
            batches_done_in_epoch: step,
            best_eval_loss: None,
            evals_without_improvement: 0,
            total_steps: 10,
            data_hash: "h".to_string(),
        };
        for step in [2, 4, 6] {
            let partial = run.begin_checkpoint(step).unwrap();
            run.commit_checkpoint(&partial, step, &state(step), 2).unwrap();
        }
        run.begin_checkpoint(8).unwrap();
        let (step, path) = run.last_checkpoint().unwrap().unwrap();
        assert_eq!(step, 6);
        assert_eq!(RunDir::read_state(&path).unwrap(), state(6));
        assert!(!run.checkpoint_dir(2).exists());
        assert!(run.checkpoint_dir(4).exists());
    }
}
